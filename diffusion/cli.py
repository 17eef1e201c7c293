"""What the command-line tools share: argument types, the device and thread options, the parser shape.

``python -m diffusion.train``, ``python -m diffusion.evaluate`` and ``python -m
diffusion.bench`` check every number at the boundary (house rule 7) with the types
below, so a bad value is refused with a one-line argparse message before a model is
built or a dataset read. Each tool is one parser with a required subcommand; every
subcommand module registers itself with an ``add_subcommand(subparsers)`` function
(:func:`command_parser` calls them in order).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable

import torch

from diffusion.devices import DEVICE_CHOICES

THREADS_HELP = "torch CPU threads (default: torch's choice)"
Register = Callable[[argparse._SubParsersAction], None]


def positive_int(text: str) -> int:
    """An integer of at least 1 (steps, batch sizes, repeats)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An integer of at least 0, where 0 means "none" or "torch's choice"."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def probability(text: str) -> float:
    """A number in ``[0, 1]``."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def channels(text: str) -> tuple[int, ...]:
    """Widths per resolution, e.g. ``16,32,64``: 1 to 3 entries, each 4..512.

    The limits keep a typo from building a network that does not fit in memory.
    """
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not 1 <= len(widths) <= 3 or not all(4 <= c <= 512 for c in widths):
        raise argparse.ArgumentTypeError("give 1 to 3 channel counts, each 4..512")
    return widths


def positive_int_list(text: str) -> list[int]:
    """Comma-separated positive integers, e.g. ``100,50,20``; empty entries are skipped."""
    return [positive_int(v) for v in text.split(",") if v.strip()]


def float_list(text: str) -> list[float]:
    """Comma-separated numbers, e.g. ``15,25,50``; empty entries are skipped."""
    return [float(v) for v in text.split(",") if v.strip()]


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cuda|mps|cpu`` (:func:`diffusion.devices.resolve_device` reads it)."""
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="default auto")


def add_threads_argument(parser: argparse.ArgumentParser, help: str = THREADS_HELP) -> None:
    """``--threads N``: torch's CPU threads, 0 for torch's own choice (see :func:`use_threads`)."""
    parser.add_argument("--threads", type=non_negative_int, default=0, help=help)


def use_threads(threads: int) -> None:
    """Set torch's CPU thread count, unless ``threads`` is 0 (keep torch's choice)."""
    if threads:
        torch.set_num_threads(threads)


def command_parser(prog: str, description: str, subcommands: Iterable[Register], *, dest: str = "command",
                   metavar: str | None = None) -> argparse.ArgumentParser:
    """One parser whose required subcommands are registered by ``subcommands``, in order.

    Args:
        prog: The command as the user types it, e.g. ``python -m diffusion.train``.
        description: The first line of ``--help``.
        subcommands: ``add_subcommand(subparsers)`` functions; each adds one or more subparsers.
        dest: The attribute that holds the chosen subcommand's name.
        metavar: How ``--help`` names the subcommand (default: the list of choices).
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    subparsers = parser.add_subparsers(dest=dest, required=True, metavar=metavar)
    for add in subcommands:
        add(subparsers)
    return parser
