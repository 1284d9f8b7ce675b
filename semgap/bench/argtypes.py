"""argparse value types shared by the pytest options and the report's command line (light: no torch)."""
from __future__ import annotations

import argparse


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def fraction(text: str) -> float:
    """A fraction strictly between 0 and 1 (a threshold or a significance level)."""
    value = _number(text)
    if value is None or not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return value


def share(text: str) -> float:
    """A share from 0 to 1, both ends included (a token agreement)."""
    value = _number(text)
    if value is None or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share from 0 to 1, got {text!r}")
    return value
