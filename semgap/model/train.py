"""python -m semgap.model.train PRESET: train a trained preset now (once; later runs load it from the cache)."""
from __future__ import annotations

import argparse
import json
import sys

from semgap.model import presets, training


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m semgap.model.train",
                                     description="Train a trained preset now (once; later runs load it from the cache).")
    parser.add_argument("preset", help=f"a preset with a training entry: {', '.join(presets.trained_presets())}")
    parser.add_argument("--seed", type=int, default=0, help="the training seed (default 0, as --semgap-seed)")
    args = parser.parse_args(argv)
    if args.preset not in presets.trained_presets():
        parser.error(f"{args.preset!r} is not a trained preset; choose from {', '.join(presets.trained_presets())}")
    preset = presets.trained_preset(args.preset, args.seed)
    print(f"{training.trained_checkpoint(preset)}\n{json.dumps(training.stored_quality(preset), indent=2)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
