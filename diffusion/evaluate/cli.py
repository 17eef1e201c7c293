"""``python -m diffusion.evaluate``: one parser over the evaluations of the shipped models, and :func:`main`.

Usage::

    python -m diffusion.evaluate mnist|denoise|denoise-tune|denoise-color|text2image [options]

Lesson 3's digit DDPM is measured by :mod:`diffusion.evaluate.mnist` (``mnist``),
lesson 4's photo denoiser by :mod:`diffusion.evaluate.denoise` (``denoise``,
``denoise-tune``, ``denoise-color``) and lesson 5's tiny Stable Diffusion by
:mod:`diffusion.evaluate.text2image` (``text2image``). Each module registers its
subcommands and sets ``run``; they do not import each other or this parser.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from diffusion import cli
from diffusion.evaluate import denoise, mnist, text2image

SUBCOMMANDS = (mnist.add_subcommand, denoise.add_subcommands, text2image.add_subcommand)
DESCRIPTION = "Evaluation CLI: how good are the shipped models? ``python -m diffusion.evaluate mnist|denoise``."


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m diffusion.evaluate`` parser with one subparser per evaluation."""
    return cli.command_parser("python -m diffusion.evaluate", DESCRIPTION, SUBCOMMANDS, dest="task")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one evaluation; returns the exit status."""
    args = build_parser().parse_args(argv)
    return args.run(args)
