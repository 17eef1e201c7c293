"""``python -m diffusion.train denoiser``: train lesson 5's noise-conditional denoiser.

Usage::

    python -m diffusion.train denoiser --data-dir data/denoise/BSD400 --out runs/denoiser \\
        [--steps 8000] [--export assets/models/photo-denoiser]

Training the diffusion way (Ho et al. 2020, Algorithm 1, with σ drawn instead of t):

1. crop a ``--patch`` square from a training image (random scale, flip, rotation);
   pixels scaled to ``[-1, 1]``
2. σ ~ Uniform(0, σ_max) on the 0–255 scale, σ_model = 2σ/255, τ = τ*(σ)
   (:class:`diffusion.models.denoiser_net.NoiseLevels`)
3. ε ~ N(0, I);  x_τ = √ᾱ (x_0 + σ_model ε) = √ᾱ x_0 + √(1-ᾱ) ε   (DDPM eq. 4)
4. L = σ_model ‖ε - ε_θ(x_τ, τ)‖² / σ_ref

``σ_model² ‖ε - ε_θ‖²`` is the error of the Tweedie estimate of x_0, the
quantity PSNR measures; dividing by σ_model (weight σ rather than σ²) keeps
every noise level's share of the loss about equal, because the best
achievable error grows roughly like σ. σ_ref (σ = 25) only sets the scale.

Data: a folder of training images, converted to grey (``--image-channels 1``,
the default; the standard choice is BSD400, the 400 images of Zhang et al. 2017)
or read as RGB (``--image-channels 3``: a native colour denoiser that sees the
three planes together; the standard choice is CBSD432, the colour originals of
BSD400 plus the rest of BSD500's training and validation images). Patches are
``(C, p, p)`` and the network has ``C·r²`` in/out channels.
Folders named like the test sets (BSD68, CBSD68, Set12, …) are refused: they are for
testing only. ``--val-images`` images of the folder are held out and the
validation PSNR (over all C planes) of the EMA model at σ = 15, 25, 50 is logged to
``validation.jsonl`` every ``--validate-every`` steps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from PIL import Image
from tqdm import tqdm

from diffusion import cli
from diffusion.datasets import digits as data
from diffusion.errors import InputError
from diffusion.models.denoiser_net import (
    SIGMA_MAX_255,
    NoiseLevels,
    build_denoiser_unet,
    image_channels,
    predict_noise,
    sigma_to_model,
    tweedie,
    unshuffle_factor,
)
from diffusion.schedule import make_scheduler
from diffusion.train import loop

TEST_SET_NAMES = ("bsd68", "cbsd68", "set12", "set14", "kodak24", "mcmaster", "urban100", "mcmaster18")
SCALES = (1.0, 0.9, 0.8, 0.7)  # DnCNN's training scales (Zhang et al. 2017)
VALIDATION_SIGMAS = (15, 25, 50)
SIGMA_REF = float(sigma_to_model(25.0))
RUN_KEYS = ("channels", "layers_per_block", "unshuffle", "batch_size", "patch", "sigma_max", "lr", "warmup",
            "seed", "val_images", "split_seed", "ema_decay", "weight_decay", "grad_clip", "init")


def load_training_folder(folder: str | Path, channels: int = 1, max_images: int = 5000
                         ) -> tuple[list[np.ndarray], list[str]]:
    """Every image of ``folder`` (sorted by name) as uint8 (see :func:`diffusion.datasets.digits.photo_folder`).

    Args:
        folder: The training folder.
        channels: 1: grey ``(H, W)`` arrays; 3: RGB ``(H, W, 3)`` arrays.
        max_images: Refuse folders with more images.

    Raises:
        InputError: The folder is missing, empty, too big, or named like a test set.
    """
    folder = Path(folder)
    if folder.resolve().name.lower() in TEST_SET_NAMES:
        raise InputError("test_set", "{name} is a test set: train on BSD400 or your own images, "
                         "never on the images you evaluate on.", name=folder.name)
    if channels not in (1, 3):
        raise InputError("image_channels", "--image-channels must be 1 (grey) or 3 (colour).")
    photos = data.photo_folder(folder, mode="L" if channels == 1 else "RGB", max_images=max_images)
    return [pixels[:, :, 0] if channels == 1 else pixels for _, pixels in photos], [name for name, _ in photos]


def load_grey_folder(folder: str | Path, max_images: int = 5000) -> tuple[list[np.ndarray], list[str]]:
    """Every image of ``folder`` (sorted by name) as a grey ``(H, W)`` uint8 array.

    See :func:`load_training_folder` (``channels = 1``).
    """
    return load_training_folder(folder, 1, max_images)


class PatchSampler:
    """Random training patches: scale, crop, one of the 8 flips/rotations; values in ``[-1, 1]``.

    Args:
        images: uint8 images, all grey ``(H, W)`` or all RGB ``(H, W, 3)``, each at least
            ``patch`` pixels on its short side.
        patch: Patch side in pixels.
    """

    def __init__(self, images: list[np.ndarray], patch: int) -> None:
        self.patch = patch
        self.channels = images[0].shape[2] if images and images[0].ndim == 3 else 1
        self.pyramid: list[np.ndarray] = []  # (H, W) grey or (H, W, C) uint8: a quarter of float32's memory
        for pixels in images:
            if (pixels.shape[2] if pixels.ndim == 3 else 1) != self.channels:
                raise InputError("image_channels", "The training images mix grey and colour.")
            h, w = pixels.shape[:2]
            for scale in SCALES:
                size = (round(w * scale), round(h * scale))
                if min(size) < patch:
                    continue
                resized = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC))
                self.pyramid.append(resized)
        if not self.pyramid:
            raise InputError("images_small", "The training images are smaller than the {patch}-pixel patch.",
                             patch=patch)

    def sample(self, batch_size: int, rng: np.random.Generator) -> torch.Tensor:
        """``(batch_size, C, patch, patch)`` patches drawn with ``rng`` (the same draws for every C)."""
        out = np.empty((batch_size, self.channels, self.patch, self.patch), dtype=np.float32)
        for i in range(batch_size):
            image = self.pyramid[rng.integers(len(self.pyramid))]
            y = rng.integers(image.shape[0] - self.patch + 1)
            x = rng.integers(image.shape[1] - self.patch + 1)
            crop = image[y:y + self.patch, x:x + self.patch].astype(np.float32) / 127.5 - 1.0
            crop = np.rot90(crop, k=int(rng.integers(4)), axes=(0, 1))
            crop = crop[:, ::-1] if rng.integers(2) else crop
            out[i] = crop.transpose(2, 0, 1) if crop.ndim == 3 else crop
        return torch.from_numpy(out)


def denoiser_loss(unet: UNet2DModel, levels: NoiseLevels, x0: torch.Tensor, sigma_max_255: float,
                  generator: torch.Generator) -> torch.Tensor:
    """Steps 2–4 of the module docstring for a batch of clean patches ``x0``."""
    n = x0.shape[0]
    sigma = sigma_to_model(torch.rand(n, generator=generator, dtype=torch.float64) * sigma_max_255)
    noise = torch.randn(x0.shape, generator=generator)
    tau = torch.from_numpy(levels.tau(sigma.numpy())).float()
    abar = 1.0 / (1.0 + sigma.square())
    s = sigma.float().view(-1, 1, 1, 1)
    x_t = abar.sqrt().float().view(-1, 1, 1, 1) * (x0 + s * noise.to(x0.device))
    eps = predict_noise(unet, x_t, tau.to(x0.device))
    return (s * (eps - noise.to(x0.device)).square()).mean() / SIGMA_REF


@torch.no_grad()
def validate(unet: UNet2DModel, levels: NoiseLevels, images: list[np.ndarray], seed: int) -> dict[str, float]:
    """Mean PSNR (dB) of the one-step estimate on held-out images at σ = 15, 25, 50 (seeded noise).

    Grey ``(H, W)`` or RGB ``(H, W, 3)`` images; a colour PSNR is taken over all three
    planes together (the mean squared error of every R, G and B value), as CBSD68 is scored.
    """
    unet.eval()
    scores = {}
    for sigma_255 in VALIDATION_SIGMAS:
        psnrs = []
        for i, pixels in enumerate(images):
            planes = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
            clean = torch.from_numpy(np.ascontiguousarray(planes).astype(np.float32) / 127.5 - 1.0)[None]
            g = torch.Generator().manual_seed(seed * 1000 + i)
            noisy = clean + float(sigma_to_model(sigma_255)) * torch.randn(clean.shape, generator=g)
            x0 = tweedie(unet, levels, noisy.to(unet.device), float(sigma_to_model(sigma_255))).cpu()
            mse = ((x0.clamp(-1, 1) - clean) * 127.5).square().mean().item()
            psnrs.append(10 * np.log10(255.0**2 / mse))
        scores[f"psnr_sigma{sigma_255}"] = round(float(np.mean(psnrs)), 3)
    return scores


def export_denoiser(unet: UNet2DModel, scheduler: DDPMScheduler, out: Path, info_file: Path,
                    sigma_max_255: float) -> None:
    """Save ``unet/`` + ``scheduler/`` (safetensors) plus ``denoiser.json`` and ``train_info.json``."""
    loop.export(unet, scheduler, out, info_file)
    (out / "denoiser.json").write_text(json.dumps({
        "kind": "noise-conditional denoiser", "channels": image_channels(unet), "sigma_max_255": sigma_max_255,
        "timesteps": "continuous tau in [-1, T-1], log(alpha_bar) linear between integer timesteps",
        "pixel_unshuffle": unshuffle_factor(unet)}, indent=1))


def run_denoiser(args: argparse.Namespace) -> int:
    """Train (or resume) the denoiser; see the module docstring."""
    # a grey run's settings stay what they always were, so older grey checkpoints still resume
    run_keys = RUN_KEYS + (("image_channels",) if args.image_channels != 1 else ())
    device, run_dir, settings, checkpoint = loop.prepare_run(args, run_keys)
    if checkpoint and args.resume:  # a grey run's settings do not name its channels: compare them here
        saved = json.loads((checkpoint / "state.json").read_text())["settings"].get("image_channels", 1)
        if saved != args.image_channels:
            raise InputError("resume_mismatch", "Resume with the run's own settings; these differ "
                             "(checkpoint, now): {changed}.",
                             changed={"image_channels": (saved, args.image_channels)})
    images, names = load_training_folder(args.data_dir, args.image_channels)
    if args.val_images >= len(images):
        raise InputError("val_images", "--val-images must be smaller than the {n} images.", n=len(images))
    order = np.random.default_rng(args.split_seed).permutation(len(images))
    val_idx, train_idx = sorted(order[:args.val_images].tolist()), sorted(order[args.val_images:].tolist())
    (run_dir / "split.json").write_text(json.dumps({
        "data_dir_name": Path(args.data_dir).resolve().name, "images": len(images),
        "split_seed": args.split_seed, "validation": [names[i] for i in val_idx]}, indent=1))
    sampler = PatchSampler([images[i] for i in train_idx], args.patch)
    val_images = [images[i] for i in val_idx]

    torch.manual_seed(args.seed)
    unet = build_denoiser_unet(args.channels, args.layers_per_block, args.unshuffle,
                               args.patch // args.unshuffle, args.image_channels).to(device)
    if args.init:  # fine-tune an exported denoiser: same architecture, its weights as the start
        start = UNet2DModel.from_pretrained(Path(args.init), subfolder="unet", use_safetensors=True,
                                            local_files_only=True)
        try:
            unet.load_state_dict(start.state_dict())
        except RuntimeError:
            raise InputError("init_mismatch", "{path} is not a denoiser with these --channels, "
                             "--layers-per-block, --unshuffle and --image-channels.", path=str(args.init)) from None
    ema = loop.EMA(unet, args.ema_decay)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, args.warmup, args.steps)
    scheduler = make_scheduler("linear", 1000)
    levels = NoiseLevels.from_scheduler(scheduler)
    if sigma_to_model(args.sigma_max) > levels.sigmas[-1]:
        raise InputError("sigma_max", "--sigma-max is beyond the schedule's noisiest level.")
    n_params = sum(p.numel() for p in unet.parameters())
    base_info = {"task": "denoiser", "seed": args.seed, "settings": settings, "parameters": n_params,
                 "weights_mb_fp32": round(n_params * 4 / 1e6, 2), "hardware": loop.hardware_info(device),
                 "unet_config": dict(unet.config), "scheduler_config": dict(scheduler.config),
                 "data": {"name": Path(args.data_dir).resolve().name, "images": len(images),
                          "train": len(train_idx), "validation": len(val_idx), "init": args.init,
                          "patches_per_step": args.batch_size, "patch": args.patch,
                          "image_channels": args.image_channels}}

    def one_step(step: int) -> float:
        generator = loop.step_generator(args.seed, step)
        rng = np.random.default_rng(np.random.SeedSequence([args.seed, 2, step]))
        x0 = sampler.sample(args.batch_size, rng).to(device)
        return loop.optimise(unet, ema, optimizer, lr_schedule,
                              denoiser_loss(unet, levels, x0, args.sigma_max, generator), step, args.grad_clip)

    def periodic(step: int) -> None:
        scores = validate(ema.model, levels, val_images, args.seed)
        line = json.dumps({"step": step, **scores})
        with open(run_dir / "validation.jsonl", "a") as log:
            log.write(line + "\n")
        tqdm.write("validation (EMA) " + line)

    return loop.run_loop(args, run_dir, checkpoint, unet, ema, optimizer, lr_schedule, settings, base_info,
                          one_step, periodic if val_idx else None, args.validate_every,
                          lambda out: export_denoiser(ema.model, scheduler, out, run_dir / "train_info.json",
                                                      args.sigma_max))


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register ``denoiser`` with the ``python -m diffusion.train`` parser."""
    parser = subparsers.add_parser(
        "denoiser", help="noise-conditional photo denoiser (lesson 5)",
        description="Train a noise-conditional diffusion denoiser on grey or colour image patches.")
    loop.add_run_options(parser)
    parser.set_defaults(steps=8000, batch_size=16, lr=1e-3, warmup=200, log_every=100, checkpoint_every=250)
    parser.add_argument("--data-dir", required=True, help="folder of training images, e.g. BSD400 or CBSD432")
    parser.add_argument("--image-channels", type=int, choices=(1, 3), default=1,
                        help="1: grey images (default); 3: RGB, a native colour denoiser")
    parser.add_argument("--channels", type=cli.channels, default=(32, 64, 128),
                        help="UNet widths (default 32,64,128)")
    parser.add_argument("--layers-per-block", type=cli.positive_int, default=1, help="default 1")
    parser.add_argument("--unshuffle", type=int, choices=(1, 2, 4), default=2,
                        help="pixel-unshuffle factor: the network runs at 1/r resolution (default 2)")
    parser.add_argument("--patch", type=int, default=96, help="training patch side, a multiple of 32 (default 96)")
    parser.add_argument("--sigma-max", type=float, default=SIGMA_MAX_255,
                        help=f"highest training noise level on the 0-255 scale (default {SIGMA_MAX_255:g})")
    parser.add_argument("--val-images", type=cli.non_negative_int, default=10,
                        help="images held out for validation (default 10)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the held-out choice (default 0)")
    parser.add_argument("--init", help="start from the weights of an exported denoiser folder (fine-tuning)")
    parser.add_argument("--validate-every", type=cli.non_negative_int, default=500,
                        help="steps between validations; 0: none (default 500)")
    parser.set_defaults(func=run_denoiser)
