"""``python -m diffusion.train mnist``: lesson 4's class-conditional digit DDPM.

Usage::

    python -m diffusion.train mnist [--steps N] [--channels 16,32,64] [--out runs/mnist] ...

A class-conditional DDPM (Ho et al. 2020) on 28×28 digits: the diffusers
``UNet2DModel`` of :mod:`diffusion.models.digit_unet` with 11 class embeddings, the
11th (:data:`~diffusion.models.digit_unet.NULL_CLASS`) meaning "no class" for
classifier-free guidance (Ho & Salimans 2022). Writes checkpoints, sample grids,
``metrics.jsonl``, ``split.json`` and ``train_info.json`` (command, seed, time,
hardware, loss) into ``--out``; ``--export DIR`` saves the EMA model as a diffusers
folder (``unet/`` + ``scheduler/``, safetensors). The loop, checkpoints and resume are
:mod:`diffusion.train.loop`'s.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from PIL import Image

from diffusion import cli
from diffusion.datasets import digits as data
from diffusion.errors import InputError
from diffusion.lessons.sampling import SampleRequest, sample
from diffusion.models.digit_unet import NULL_CLASS, build_unet
from diffusion.schedule import make_scheduler
from diffusion.train.loop import (
    EMA, add_run_options, batch_indices, export, hardware_info, optimise, prepare_run, run_loop, step_generator,
)

# Settings that define a run: a resumed run must be given the same ones.
RUN_KEYS = ("channels", "layers_per_block", "attention", "batch_size", "lr", "warmup", "seed",
            "data", "data_dir", "heldout_fraction", "split_seed", "class_dropout", "translate",
            "beta_schedule", "ema_decay", "weight_decay", "grad_clip")


def drop_labels(labels: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Classifier-free guidance training (Ho & Salimans 2022, Algorithm 1, line 3).

    Each label becomes :data:`NULL_CLASS` with probability ``p`` so that one
    network also learns the unconditional ε(x_t); unlabelled images (-1)
    always get :data:`NULL_CLASS`.
    """
    drop = torch.rand(labels.shape, generator=generator) < p
    return torch.where(drop | (labels < 0), torch.full_like(labels, NULL_CLASS), labels)


def random_translate(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y, filling with black (-1).

    Horizontal flips are not used: a mirrored 2, 3, 4, 5, 7 or 9 is not that
    digit, so flipping would teach the model shapes that contradict the label.
    """
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    shifts = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(shifts)])


def ddpm_loss(unet: UNet2DModel, scheduler: DDPMScheduler, x0: torch.Tensor, labels: torch.Tensor,
              generator: torch.Generator) -> torch.Tensor:
    """The simplified DDPM objective (Ho et al. 2020, Algorithm 1 and eq. 14).

    1. t ~ Uniform({1, …, T})    (diffusers index t - 1 in 0..T-1)
    2. ε ~ N(0, I)
    3. x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε     (eq. 4, ``scheduler.add_noise``)
    4. L = ‖ε - ε_θ(x_t, t, y)‖²

    The draws come from ``generator`` on the CPU, so they do not depend on the device.
    """
    n = x0.shape[0]
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    device = x0.device
    t, noise = t.to(device), noise.to(device)
    x_t = scheduler.add_noise(x0, noise, t)
    return F.mse_loss(unet(x_t, t, class_labels=labels.to(device)).sample, noise)


def train_step(unet: UNet2DModel, ema: EMA, optimizer: torch.optim.Optimizer, lr_schedule: Any,
               scheduler: DDPMScheduler, x0: torch.Tensor, labels: torch.Tensor,
               generator: torch.Generator, step: int, grad_clip: float = 1.0) -> float:
    """One optimiser step on :func:`ddpm_loss`: clip the gradient norm, AdamW, schedule, EMA.

    Returns:
        The batch loss before the update.
    """
    return optimise(unet, ema, optimizer, lr_schedule, ddpm_loss(unet, scheduler, x0, labels, generator),
                    step, grad_clip)


@torch.no_grad()
def sample_digits(unet: UNet2DModel, scheduler_config: Any, labels: Sequence[int], *,
                  guidance: float = 2.0, steps: int = 50, seed: int = 0) -> torch.Tensor:
    """The preview grid: lesson 4's own DDIM sampler (η = 0, Song et al. 2021, eq. 12) for given classes.

    Classifier-free guidance ε̃ = ε_θ(x_t, ∅) + s (ε_θ(x_t, y) - ε_θ(x_t, ∅)) (Ho & Salimans
    2022, eq. 6 with s = 1 + w); ``guidance`` = s = 1 is the plain conditional model. The
    run follows the contract of :mod:`diffusion.reverse`, like every reverse loop here.

    Returns:
        ``(N, 1, H, W)`` float tensor in ``[-1, 1]`` on the CPU.
    """
    labels = torch.as_tensor(list(labels), dtype=torch.long)
    request = SampleRequest(sampler="ddim", num_inference_steps=steps, eta=0.0, seed=seed,
                            batch_size=len(labels), guidance_scale=guidance)
    run = sample(unet, scheduler_config, request, device=unet.device, labels=labels, record=False,
                 max_batch_size=len(labels))
    return run.samples.clamp(-1.0, 1.0)


def save_grid(digits: np.ndarray, columns: int, path: Path, scale: int = 2) -> None:
    """Tile uint8 ``(N, H, W)`` digits row by row into a PNG, enlarged ``scale``× (nearest)."""
    n, h, w = digits.shape
    rows = -(-n // columns)
    canvas = np.full((rows * (h + 2), columns * (w + 2)), 80, dtype=np.uint8)
    for i, digit in enumerate(digits):
        r, c = divmod(i, columns)
        canvas[r * (h + 2) + 1: r * (h + 2) + 1 + h, c * (w + 2) + 1: c * (w + 2) + 1 + w] = digit
    image = Image.fromarray(canvas)
    image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST).save(path)


def load_dataset(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels for ``--data`` (offline subset, full MNIST or an image folder)."""
    if args.data == "offline":
        return data.mnist_offline()
    if args.data == "full":
        return data.mnist_full(args.data_dir or Path.home() / ".cache" / "diffusion-lab" / "mnist")
    if not args.data_dir:
        raise InputError("folder_missing", "--data folder needs --data-dir.")
    return data.image_folder(args.data_dir)


def run_mnist(args: argparse.Namespace) -> int:
    """Train (or resume) the class-conditional digit DDPM; see the module docstring."""
    device, run_dir, settings, checkpoint = prepare_run(args, RUN_KEYS)

    images, labels = load_dataset(args)
    split = data.split_train_heldout(images, labels, args.heldout_fraction, args.split_seed)
    x_train = data.to_model_range(split.train_images)
    y_train = torch.from_numpy(split.train_labels)
    (run_dir / "split.json").write_text(json.dumps({
        "data": args.data, "heldout_fraction": args.heldout_fraction, "split_seed": args.split_seed,
        "train": len(split.train_idx), "heldout": len(split.heldout_idx),
        "heldout_idx": split.heldout_idx.tolist()}))

    torch.manual_seed(args.seed)  # the initial weights
    unet = build_unet(args.channels, args.layers_per_block, args.attention).to(device)
    ema = EMA(unet, args.ema_decay)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, args.warmup, args.steps)
    scheduler = make_scheduler(args.beta_schedule, 1000)
    n_params = sum(p.numel() for p in unet.parameters())
    base_info = {"task": "mnist", "seed": args.seed, "settings": settings, "parameters": n_params,
                 "weights_mb_fp32": round(n_params * 4 / 1e6, 2), "hardware": hardware_info(device),
                 "unet_config": dict(unet.config), "scheduler_config": dict(scheduler.config),
                 "data": {"name": args.data, "train": len(split.train_idx), "heldout": len(split.heldout_idx),
                          "train_per_class": np.bincount(split.train_labels[split.train_labels >= 0],
                                                         minlength=data.NUM_CLASSES).tolist()}}

    def grid(step: int) -> None:
        digits = sample_digits(ema.model, scheduler.config, np.repeat(np.arange(10), args.grid_columns),
                               guidance=args.sample_guidance, seed=args.seed)
        (run_dir / "samples").mkdir(exist_ok=True)
        save_grid(data.from_model_range(digits), args.grid_columns, run_dir / "samples" / f"step_{step:06d}.png")

    def one_step(step: int) -> float:
        generator = step_generator(args.seed, step)
        index = torch.from_numpy(batch_indices(len(x_train), args.batch_size, step, args.seed))
        x0 = random_translate(x_train[index], args.translate, generator).to(device)
        y = drop_labels(y_train[index], args.class_dropout, generator)
        return train_step(unet, ema, optimizer, lr_schedule, scheduler, x0, y, generator, step, args.grad_clip)

    return run_loop(args, run_dir, checkpoint, unet, ema, optimizer, lr_schedule, settings, base_info,
                    one_step, grid, args.sample_every, lambda out: export(ema.model, scheduler, out,
                                                                          run_dir / "train_info.json"))


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register ``mnist`` with the ``python -m diffusion.train`` parser."""
    parser = subparsers.add_parser(
        "mnist", help="class-conditional DDPM on 28×28 digits",
        description="Train a class-conditional DDPM with classifier-free guidance on MNIST digits.")
    add_run_options(parser)
    parser.add_argument("--channels", type=cli.channels, default=(16, 32, 64), help="UNet widths (default 16,32,64)")
    parser.add_argument("--layers-per-block", type=cli.positive_int, default=1, help="default 1")
    parser.add_argument("--no-attention", dest="attention", action="store_false",
                        help="no self-attention at the lowest resolution")
    parser.add_argument("--data", choices=("offline", "full", "folder"), default="offline", help="default offline")
    parser.add_argument("--data-dir", help="MNIST download folder (full) or image folder (folder)")
    parser.add_argument("--heldout-fraction", type=cli.probability, default=0.2,
                        help="share kept out of training for evaluation (default 0.2)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the held-out split (default 0)")
    parser.add_argument("--class-dropout", type=cli.probability, default=0.1,
                        help="probability of training a label as 'no class' (default 0.1)")
    parser.add_argument("--translate", type=int, default=0, choices=range(5), metavar="{0..4}",
                        help="random shifts of up to this many pixels (default 0)")
    parser.add_argument("--beta-schedule", choices=("linear", "cosine"), default="linear", help="default linear")
    parser.add_argument("--sample-every", type=cli.non_negative_int, default=1000, help="steps between sample grids; 0: none")
    parser.add_argument("--sample-guidance", type=float, default=2.0, help="guidance scale of the grids (default 2)")
    parser.add_argument("--grid-columns", type=cli.positive_int, default=8, help="samples per digit in a grid")
    parser.set_defaults(func=run_mnist)
