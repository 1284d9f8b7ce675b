"""argparse value types shared by the pytest options and the report's command line (light: no torch)."""
from __future__ import annotations

import argparse
import re


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


def items(text: str) -> tuple[str, ...]:
    """The items of a comma list, stripped; empty items are dropped."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def choices(known: tuple[str, ...] | list[str], what: str):
    def parse(text: str) -> tuple[str, ...]:
        names = items(text)
        if text.strip() == "all":
            return tuple(known)
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {what} {(unknown or [text])[0]!r}; choose from {', '.join(known)} or all")
        return names

    return parse


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def positive_ints(text: str) -> tuple[int, ...]:
    values = tuple(positive_int(part) for part in items(text))
    if not values:
        raise argparse.ArgumentTypeError(f"expected positive whole numbers separated by commas, got {text!r}")
    return tuple(dict.fromkeys(values))  # each length once, in the order given


def session_counts(text: str) -> tuple[int, ...]:
    return () if text.strip() == "none" else positive_ints(text)


def non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def device(text: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; choose from auto, cpu, cuda, cuda:N")
    return text


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def parsed_by(parse):
    """An argparse type from a parser that raises ValueError with the message a user should read."""
    def parse_option(text: str):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse_option
