"""The model: presets and local checkpoints, the engine client and server share, sampling, and the trained presets."""
