"""The server side: the model server (python -m semgap.server) and what it serves: semantic sessions, batching,
KV recovery, op-level operations, and the calibration peer."""
