"""``python -m diffusion.train``: one parser over every training subcommand, and :func:`main`.

Usage::

    python -m diffusion.train mnist|denoiser|text2image|autoencoder --out RUN_FOLDER [options]

Each subcommand module (:mod:`~diffusion.train.mnist`, :mod:`~diffusion.train.denoiser`,
:mod:`~diffusion.train.text2image`) registers its own parser with ``add_subcommand``
and sets ``func``; a new model adds its module to :data:`SUBCOMMANDS`. They share
code only through :mod:`diffusion.train.loop` and :mod:`diffusion.cli`: no subcommand
module imports another one or this parser, so the imports run one way.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from diffusion import cli
from diffusion.errors import InputError
from diffusion.train import autoencoder, denoiser, mnist, text2image

SUBCOMMANDS = (mnist.add_subcommand, denoiser.add_subcommand, text2image.add_subcommand,
               autoencoder.add_subcommand)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m diffusion.train`` parser with one subparser per model."""
    return cli.command_parser("python -m diffusion.train", "Training from the command line.", SUBCOMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the subcommand and return its exit status (2 for a refused input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = "python -m diffusion.train " + shlex.join(argv)  # recorded in train_info.json
    try:
        return args.func(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
