"""``python -m diffusion.evaluate``: one parser over the evaluations of the shipped models, and :func:`main`.

Usage::

    python -m diffusion.evaluate lab2d|mnist|denoise|denoise-tune|denoise-color|noise-level|text2image|augment|anomaly [options]

The 2-D lab's defaults are measured by :mod:`diffusion.evaluate.lab2d` (``lab2d``),
lesson 4's digit DDPM by :mod:`diffusion.evaluate.mnist` (``mnist``),
lesson 5's photo denoiser by :mod:`diffusion.evaluate.denoise` (``denoise``,
``denoise-tune``, ``denoise-color``; its noise-level estimate by :mod:`diffusion.evaluate.noise_level`,
``noise-level``) and lesson 6's tiny Stable Diffusion by
:mod:`diffusion.evaluate.text2image` (``text2image``), and lesson 7's data augmentation by
:mod:`diffusion.evaluate.augment` (``augment``) and its anomaly scores by :mod:`diffusion.evaluate.anomaly`
(``anomaly``). Each module registers its
subcommands and sets ``run``; they do not import each other or this parser.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from diffusion import cli
from diffusion.evaluate import anomaly, augment, denoise, lab2d, mnist, noise_level, text2image

SUBCOMMANDS = (lab2d.add_subcommand, mnist.add_subcommand, denoise.add_subcommands, text2image.add_subcommand,
               augment.add_subcommand, anomaly.add_subcommand, noise_level.add_subcommand)
DESCRIPTION = "Evaluation CLI: how good are the shipped models? ``python -m diffusion.evaluate mnist|denoise``."


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m diffusion.evaluate`` parser with one subparser per evaluation."""
    return cli.command_parser("python -m diffusion.evaluate", DESCRIPTION, SUBCOMMANDS, dest="task")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one evaluation; returns the exit status."""
    args = build_parser().parse_args(argv)
    return args.run(args)
