"""``python -m diffusion.bench``: one parser over every benchmark, and :func:`main`.

Usage::

    python -m diffusion.bench heat [--repeat N]
    python -m diffusion.bench noising [--moves N]
    python -m diffusion.bench sampling [--model-dir DIR | --random-tiny] [--repeat N]
    python -m diffusion.bench denoise [--size 384] [--repeat N]
    python -m diffusion.bench text2image [--steps 30] [--repeat N] [--sd15] [--sd15-cpu [--sd15-keep DIR]]
    python -m diffusion.bench load [--students 30] [--seconds 60]
    python -m diffusion.bench classroom [--tab sampling] [--students 30] [--within 10] [--seeds own|same]
    python -m diffusion.bench applications [--repeat 3] [--threads 1]

One module per lesson (:mod:`~diffusion.bench.heat`, :mod:`~diffusion.bench.noising`,
:mod:`~diffusion.bench.sampling`, :mod:`~diffusion.bench.denoise`,
:mod:`~diffusion.bench.text2image`, with :mod:`~diffusion.bench.sd15`) and the classroom load test
(:mod:`~diffusion.bench.load`). Each registers its subcommand with
``add_subcommand`` and sets ``func``; a new benchmark adds its module to
:data:`SUBCOMMANDS`. Every benchmark prints ratios measured side by side in one run
(house rule 10): speed lives here, not in the tests.
"""

from __future__ import annotations

from collections.abc import Sequence

from diffusion import cli
from diffusion.bench import applications, classroom, denoise, heat, lab2d, load, noising, sampling, text2image

SUBCOMMANDS = (heat.add_subcommand, noising.add_subcommand, lab2d.add_subcommand, sampling.add_subcommand,
               denoise.add_subcommand, text2image.add_subcommand, load.add_subcommand,
               classroom.add_subcommand, applications.add_subcommand)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one benchmark; returns the exit status."""
    parser = cli.command_parser("python -m diffusion.bench", "Diffusion Lab benchmarks.", SUBCOMMANDS,
                                metavar="COMMAND")
    args = parser.parse_args(argv)
    return args.func(args)
