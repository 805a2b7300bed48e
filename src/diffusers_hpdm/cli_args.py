"""Argument types and error handling of the ``hpdm`` command line.

The ``type=`` functions reject a bad value while the arguments are parsed (argparse then prints the usage and
``argument --fps: must be an integer > 0, got '0'`` and exits with status 2), before any model is loaded.
`run_command` turns any error of a command into ``error: <message>`` on stderr and exit status 1, without a
traceback; ``--debug`` (or ``HPDM_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable

DEBUG_ENV = "HPDM_DEBUG"


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (counts, sizes, steps, fps)."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (seeds)."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (noise levels)."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (guidance scales)."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def even_positive_int(text: str) -> int:
    """An even integer >= 2 (H.264 yuv420p frame sizes)."""
    value = positive_int(text)
    if value % 2:
        raise argparse.ArgumentTypeError(f"must be an even integer >= 2 (H.264 yuv420p), got {text!r}")
    return value


def debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def _message(error: BaseException) -> str:
    if isinstance(error, ValueError | OSError | LookupError) and str(error):
        return str(error)
    return f"{type(error).__name__}: {error}"


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace, debug: bool) -> int:
    """Run one command; an exception becomes ``error: <message>`` (exit status 1) unless ``debug``."""
    try:
        return func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except SystemExit:
        raise
    except Exception as error:
        if debug:
            raise
        hint = f" (run with --debug or {DEBUG_ENV}=1 for the traceback)"
        raise SystemExit(
            f"error: {_message(error)}{'' if isinstance(error, ValueError | OSError) else hint}"
        ) from None
