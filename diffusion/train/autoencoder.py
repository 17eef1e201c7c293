"""``python -m diffusion.train autoencoder``: lesson 7's digit autoencoder, the anomaly baseline.

Trains :class:`~diffusion.models.digit_autoencoder.DigitAutoencoder` to rebuild the
digits the diffusion model was trained on, and nothing else: the same offline subset,
split with the same settings (``--heldout-fraction 0.2 --split-seed 0``, the digit
DDPM's ``train_info.json``), so the 1,000 held-out digits stay unseen by both models
and can serve as the "real digits" reference of the anomaly scores.

Objective: the mean squared reconstruction error ``‖D(E(x)) - x‖²`` on the ``[-1, 1]``
scale, minimised with AdamW under a warm-up + cosine schedule; the exported model is
the EMA of the weights. Loop, checkpoints, resume and ``train_info.json`` are
:mod:`diffusion.train.loop`'s, like every training subcommand's.

Usage::

    python -m diffusion.train autoencoder --out runs/ae --export assets/models/digit-autoencoder
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.optimization import get_cosine_schedule_with_warmup

from diffusion import cli
from diffusion.datasets import digits as data
from diffusion.models.digit_autoencoder import DigitAutoencoder, build_autoencoder
from diffusion.train.loop import (
    EMA, add_run_options, batch_indices, hardware_info, optimise, prepare_run, run_loop,
)

# Settings that define a run: a resumed run must be given the same ones.
RUN_KEYS = ("channels", "latent_dim", "batch_size", "lr", "warmup", "seed", "heldout_fraction",
            "split_seed", "ema_decay", "weight_decay", "grad_clip")


def reconstruction_loss(model: DigitAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """The autoencoder's objective: mean squared error ``‖D(E(x)) - x‖²`` over pixels and batch."""
    return F.mse_loss(model(x), x)


def export_autoencoder(model: DigitAutoencoder, out: Path, info_file: Path | None = None) -> None:
    """Save the model as a diffusers-style folder (``config.json`` + safetensors) plus ``train_info.json``."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    if info_file is not None and info_file.exists():
        shutil.copyfile(info_file, out / "train_info.json")


def run_autoencoder(args: argparse.Namespace) -> int:
    """Train (or resume) the digit autoencoder; see the module docstring."""
    device, run_dir, settings, checkpoint = prepare_run(args, RUN_KEYS)

    images, labels = data.mnist_offline()
    split = data.split_train_heldout(images, labels, args.heldout_fraction, args.split_seed)
    x_train = data.to_model_range(split.train_images)
    (run_dir / "split.json").write_text(json.dumps({
        "data": "offline", "heldout_fraction": args.heldout_fraction, "split_seed": args.split_seed,
        "train": len(split.train_idx), "heldout": len(split.heldout_idx),
        "heldout_idx": split.heldout_idx.tolist()}))

    torch.manual_seed(args.seed)  # the initial weights
    model = build_autoencoder(args.channels, args.latent_dim).to(device)
    ema = EMA(model, args.ema_decay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, args.warmup, args.steps)
    n_params = sum(p.numel() for p in model.parameters())
    base_info = {"task": "autoencoder", "seed": args.seed, "settings": settings, "parameters": n_params,
                 "weights_mb_fp32": round(n_params * 4 / 1e6, 3), "hardware": hardware_info(device),
                 "model_config": dict(model.config),
                 "data": {"name": "offline", "train": len(split.train_idx), "heldout": len(split.heldout_idx),
                          "train_per_class": np.bincount(split.train_labels,
                                                         minlength=data.NUM_CLASSES).tolist()}}

    def validate(step: int) -> None:
        # Training-set error of the EMA model only: the held-out digits stay unseen.
        with torch.no_grad():
            loss = reconstruction_loss(ema.model.eval(), x_train[:500].to(device)).item()
        with open(run_dir / "validation.jsonl", "a") as log:
            log.write(json.dumps({"step": step, "ema_train_mse": round(loss, 6)}) + "\n")

    def one_step(step: int) -> float:
        index = torch.from_numpy(batch_indices(len(x_train), args.batch_size, step, args.seed))
        loss = reconstruction_loss(model, x_train[index].to(device))
        return optimise(model, ema, optimizer, lr_schedule, loss, step, args.grad_clip)

    return run_loop(args, run_dir, checkpoint, model, ema, optimizer, lr_schedule, settings, base_info,
                    one_step, validate, args.validate_every,
                    lambda out: export_autoencoder(ema.model, out, run_dir / "train_info.json"))


def _two_channels(text: str) -> tuple[int, int]:
    widths = cli.channels(text)
    if len(widths) != 2:
        raise argparse.ArgumentTypeError("give two channel counts, e.g. 16,32")
    return widths


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register ``autoencoder`` with the ``python -m diffusion.train`` parser."""
    parser = subparsers.add_parser(
        "autoencoder", help="convolutional autoencoder of 28×28 digits (lesson 7's anomaly baseline)",
        description="Train the small digit autoencoder whose reconstruction error is lesson 7's "
                    "classic anomaly score, on the digit model's own training split.")
    add_run_options(parser)
    parser.add_argument("--channels", type=_two_channels, default=(16, 32),
                        help="widths at 14×14 and 7×7 (default 16,32)")
    parser.add_argument("--latent-dim", type=cli.positive_int, default=16, help="code size (default 16)")
    parser.add_argument("--heldout-fraction", type=cli.probability, default=0.2,
                        help="share kept out of training, as for the digit DDPM (default 0.2)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the held-out split (default 0)")
    parser.add_argument("--validate-every", type=cli.non_negative_int, default=1000,
                        help="steps between training-error checks of the EMA model; 0: none")
    parser.set_defaults(func=run_autoencoder)
