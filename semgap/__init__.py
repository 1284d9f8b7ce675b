"""semgap: measure the semantic gap in accelerator disaggregation with pytest-benchmark."""
import os

# Nothing in semgap may reach a model hub: models are built from presets or read from disk.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
