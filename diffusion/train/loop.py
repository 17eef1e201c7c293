"""Training from the command line.

Usage::

    python -m diffusion.train mnist [--steps N] [--channels 16,32,64] [--out runs/mnist] ...

Subcommands:

mnist
    A class-conditional DDPM (Ho et al. 2020) on 28×28 digits: diffusers
    ``UNet2DModel`` with 11 class embeddings, the 11th (:data:`NULL_CLASS`)
    meaning "no class" for classifier-free guidance (Ho & Salimans 2022).
    Writes checkpoints, sample grids, ``metrics.jsonl``, ``split.json`` and
    ``train_info.json`` (command, seed, time, hardware, loss) into ``--out``;
    ``--export DIR`` saves the EMA model as a diffusers folder (``unet/`` +
    ``scheduler/``, safetensors).

Each subcommand is an ``_add_<name>`` function that registers its parser and
sets ``func``; further models (a photo denoiser) add theirs to ``SUBCOMMANDS``.

Determinism: every random draw of step ``s`` (batch order, t, ε, class
dropout, shifts) comes from generators seeded by ``(seed, s)``, and the
checkpoint holds the weights, the EMA, the AdamW moments and the learning-rate
schedule position, so a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from diffusion.datasets import digits as data
from diffusion.devices import DEVICE_CHOICES, describe_device, resolve_device
from diffusion.errors import InputError
from diffusion.schedule import make_scheduler

NULL_CLASS = data.NUM_CLASSES  # label index 10: "no class", the unconditional model
NUM_CLASS_EMBEDS = data.NUM_CLASSES + 1
CHECKPOINT = "checkpoint"
# Settings that define a run: a resumed run must be given the same ones.
RUN_KEYS = ("channels", "layers_per_block", "attention", "batch_size", "lr", "warmup", "seed",
            "data", "data_dir", "heldout_fraction", "split_seed", "class_dropout", "translate",
            "beta_schedule", "ema_decay", "weight_decay", "grad_clip")


def build_unet(channels: Sequence[int], layers_per_block: int = 1, attention: bool = True,
               sample_size: int = data.IMAGE_SIZE) -> UNet2DModel:
    """The class-conditional ε-network: a diffusers ``UNet2DModel`` on 1-channel images.

    One down block per entry of ``channels``; all but the last halve the size
    (28 → 14 → 7 for three). With ``attention`` the lowest resolution gets
    self-attention (down, middle and up block), as in DDPM's 16×16 attention.

    Args:
        channels: Feature channels per resolution, e.g. ``(16, 32, 64)``.
        layers_per_block: ResNet blocks per down block (up blocks get one more).
        attention: Self-attention at the lowest resolution.
        sample_size: Image side; must be divisible by ``2 ** (len(channels) - 1)``.

    Returns:
        An untrained model with ``num_class_embeds = 11`` (10 digits + :data:`NULL_CLASS`).
    """
    channels = tuple(int(c) for c in channels)
    if sample_size % 2 ** (len(channels) - 1):
        raise InputError("bad_channels", "{n} resolutions need an image side divisible by {d}.",
                         n=len(channels), d=2 ** (len(channels) - 1))
    group = math.gcd(*channels)
    groups = max(g for g in range(1, 9) if group % g == 0)
    down = ["DownBlock2D"] * len(channels)
    up = ["UpBlock2D"] * len(channels)
    if attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=sample_size, in_channels=1, out_channels=1, block_out_channels=channels,
        layers_per_block=layers_per_block, down_block_types=tuple(down), up_block_types=tuple(up),
        norm_num_groups=groups, num_class_embeds=NUM_CLASS_EMBEDS, add_attention=attention,
        attention_head_dim=min(32, channels[-1]) if attention else None,
    )


def step_generator(seed: int, step: int) -> torch.Generator:
    """The torch generator of one training step (t, ε, class dropout, shifts), seeded by ``(seed, step)``."""
    word = np.random.SeedSequence([seed, 0, step]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(word))


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Sample indices of step ``step``: epochs of fresh permutations, each seeded by ``(seed, epoch)``."""
    first = step * batch_size
    positions = np.arange(first, first + batch_size)
    epochs = positions // n
    out = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        permutation = np.random.default_rng(np.random.SeedSequence([seed, 1, int(epoch)])).permutation(n)
        out[epochs == epoch] = permutation[positions[epochs == epoch] % n]
    return out


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


class EMA:
    """Exponential moving average of the weights, held as a full model copy.

    θ_ema ← d θ_ema + (1 - d) θ with d = min(decay, (1 + s) / (10 + s)) at step s,
    the warm-up diffusers' ``EMAModel`` uses by default. Keeping a whole
    ``UNet2DModel`` (not a list of tensors) lets the EMA sample and
    ``save_pretrained`` directly.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1.0 - d)


def train_step(unet: UNet2DModel, ema: EMA, optimizer: torch.optim.Optimizer, lr_schedule: Any,
               scheduler: DDPMScheduler, x0: torch.Tensor, labels: torch.Tensor,
               generator: torch.Generator, step: int, grad_clip: float = 1.0) -> float:
    """One optimiser step on :func:`ddpm_loss`: clip the gradient norm, AdamW, schedule, EMA.

    Returns:
        The batch loss before the update.
    """
    return optimise(unet, ema, optimizer, lr_schedule, ddpm_loss(unet, scheduler, x0, labels, generator),
                    step, grad_clip)


def optimise(model: torch.nn.Module, ema: EMA, optimizer: torch.optim.Optimizer, lr_schedule: Any,
             loss: torch.Tensor, step: int, grad_clip: float = 1.0) -> float:
    """Back-propagate ``loss``, clip the gradient norm, step AdamW and the schedule, update the EMA.

    Returns:
        The loss before the update.
    """
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    lr_schedule.step()
    ema.update(model, step)
    return loss.item()


@torch.no_grad()
def sample_digits(unet: UNet2DModel, scheduler_config: Any, labels: Sequence[int], *,
                  guidance: float = 2.0, steps: int = 50, seed: int = 0) -> torch.Tensor:
    """DDIM samples (Song et al. 2021, eq. 12, η = 0) with classifier-free guidance.

    ε̃ = ε_θ(x_t, ∅) + s (ε_θ(x_t, y) - ε_θ(x_t, ∅))  (Ho & Salimans 2022, eq. 6 with s = 1 + w);
    ``guidance`` = s = 1 is the plain conditional model and skips the ∅ pass.

    Returns:
        ``(N, 1, H, W)`` float tensor in ``[-1, 1]`` on the CPU.
    """
    device = unet.device
    scheduler = DDIMScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(steps)
    y = torch.as_tensor(list(labels), dtype=torch.long, device=device)
    size = unet.config.sample_size
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((len(y), 1, size, size), generator=generator).to(device)
    for t in scheduler.timesteps:
        if guidance == 1.0:
            eps = unet(x, t, class_labels=y).sample
        else:
            both = unet(torch.cat([x, x]), t, class_labels=torch.cat([y, torch.full_like(y, NULL_CLASS)]))
            eps_cond, eps_uncond = both.sample.chunk(2)
            eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        x = scheduler.step(eps, t, x, use_clipped_model_output=True).prev_sample  # see diffusion.lessons.sampling.sampler
    return x.clamp(-1.0, 1.0).cpu()


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


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    state = optimizer.state_dict()
    tensors = {f"{index}.{name}": value.detach().cpu().contiguous()
               for index, entry in state["state"].items() for name, value in entry.items()}
    return tensors, state["param_groups"]


def save_checkpoint(run_dir: Path, unet: UNet2DModel, ema: EMA, optimizer: torch.optim.Optimizer,
                    lr_schedule: Any, meta: dict[str, Any]) -> None:
    """Write ``run_dir/checkpoint/`` atomically: weights, EMA and AdamW state as safetensors, rest JSON."""
    tmp, final, old = run_dir / f"{CHECKPOINT}.tmp", run_dir / CHECKPOINT, run_dir / f"{CHECKPOINT}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.cpu().contiguous() for k, v in unet.state_dict().items()}, tmp / "unet.safetensors")
    save_file({k: v.cpu().contiguous() for k, v in ema.model.state_dict().items()}, tmp / "ema.safetensors")
    tensors, groups = _optimizer_tensors(optimizer)
    save_file(tensors, tmp / "optimizer.safetensors")
    state = dict(meta, optimizer_groups=groups, lr_schedule=lr_schedule.state_dict())
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(run_dir: Path) -> Path | None:
    """The run's checkpoint folder, or the previous one if a save was cut off between two renames."""
    for name in (CHECKPOINT, f"{CHECKPOINT}.old"):
        if (run_dir / name / "state.json").is_file():
            return run_dir / name
    return None


def load_checkpoint(folder: Path, unet: UNet2DModel, ema: EMA, optimizer: torch.optim.Optimizer,
                    lr_schedule: Any) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote into ``folder`` (no pickle anywhere); return its metadata."""
    state = json.loads((folder / "state.json").read_text())
    unet.load_state_dict(load_file(folder / "unet.safetensors"))
    ema.model.load_state_dict(load_file(folder / "ema.safetensors"))
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in load_file(folder / "optimizer.safetensors").items():
        index, name = key.split(".", 1)
        moments.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": moments, "param_groups": state["optimizer_groups"]})
    lr_schedule.load_state_dict(state["lr_schedule"])
    return state


def load_dataset(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels for ``--data`` (offline subset, full MNIST or an image folder)."""
    if args.data == "offline":
        return data.mnist_offline()
    if args.data == "full":
        return data.mnist_full(args.data_dir or Path.home() / ".cache" / "diffusion-lab" / "mnist")
    if not args.data_dir:
        raise InputError("folder_missing", "--data folder needs --data-dir.")
    return data.image_folder(args.data_dir)


def hardware_info(device: torch.device) -> dict[str, Any]:
    """CPU model, core and thread counts, device and library versions, for the model card."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": describe_device(device), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


def prepare_run(args: argparse.Namespace, run_keys: Sequence[str]
                ) -> tuple[torch.device, Path, dict[str, Any], Path | None]:
    """Threads, device, run folder, the run-defining settings and an existing checkpoint.

    Raises:
        InputError: The device is unavailable, or ``--out`` holds a run and ``--resume`` is missing.
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        raise InputError("device_unavailable", str(error)) from None
    run_dir = Path(args.out)
    settings = json.loads(json.dumps({key: getattr(args, key) for key in run_keys}, default=str))
    checkpoint = find_checkpoint(run_dir)
    if checkpoint and not args.resume:
        raise InputError("run_exists", "{path} already holds a checkpoint: add --resume or choose another --out.",
                         path=str(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    return device, run_dir, settings, checkpoint


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


def run_loop(args: argparse.Namespace, run_dir: Path, checkpoint: Path | None, unet: torch.nn.Module,
             ema: EMA, optimizer: torch.optim.Optimizer, lr_schedule: Any, settings: dict[str, Any],
             base_info: dict[str, Any], one_step: Callable[[int], float],
             periodic: Callable[[int], None] | None, periodic_every: int,
             export_to: Callable[[Path], None]) -> int:
    """The training loop every subcommand shares: resume, steps, logs, checkpoints, pause, export.

    Args:
        args: Parsed options of :func:`_add_common` (steps, resume, stop/pause, logging, export).
        run_dir: The run folder. ``checkpoint``: its checkpoint folder, if any.
        unet, ema, optimizer, lr_schedule: What a checkpoint saves and restores.
        settings: Options that define the run; a resume must repeat them.
        base_info: Fixed fields of ``train_info.json`` (task, data, hardware, configs).
        one_step: Runs optimiser step ``s`` (all its random draws seeded by ``(seed, s)``)
            and returns the batch loss.
        periodic: Called with the step count every ``periodic_every`` steps and at the end
            (sample grids, validation); ``periodic_every = 0`` never.
        export_to: Saves the finished model to a folder (``--export``).

    Returns:
        0 when finished or paused on purpose, 130 when stopped by a signal.
    """
    step, seconds, invocations, recent = 0, 0.0, [], []
    if args.resume and checkpoint:
        meta = load_checkpoint(checkpoint, unet, ema, optimizer, lr_schedule)
        changed = {k: (meta["settings"][k], v) for k, v in settings.items() if meta["settings"].get(k) != v}
        if changed:
            raise InputError("resume_mismatch", "Resume with the run's own settings; these differ "
                             "(checkpoint, now): {changed}.", changed=changed)
        step, seconds = meta["step"], meta["train_seconds"]
        invocations, recent = meta["invocations"], meta["recent_losses"]
        _truncate_metrics(run_dir / "metrics.jsonl", step)
        tqdm.write(f"resumed {run_dir} at step {step}")
    invocations.append({"command": getattr(args, "command_line", "python -m diffusion.train"),
                        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "start_step": step})

    def record(finished: bool) -> None:
        invocations[-1].update(end_step=step, seconds=round(seconds - start_seconds, 1))
        meta = {"step": step, "train_seconds": seconds, "settings": settings,
                "invocations": invocations, "recent_losses": recent}
        save_checkpoint(run_dir, unet, ema, optimizer, lr_schedule, meta)
        info = dict(base_info, command=invocations[0]["command"], invocations=invocations, steps=step,
                    train_seconds=round(seconds, 1), wall_time=_hms(seconds), finished=finished,
                    final_loss=round(float(np.mean(recent)), 5) if recent else None,
                    final_loss_window=len(recent))
        (run_dir / "train_info.json").write_text(json.dumps(info, indent=1))

    start_seconds, interval_losses = seconds, []
    bar = tqdm(total=args.steps, initial=step, unit="step", dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 60.0)
    tick = time.perf_counter()
    unet.train()
    stop: list[int] = []  # Ctrl-C or kill: finish the step, save, then exit
    previous = _install_handlers(lambda signum, frame: stop.append(signum))
    try:
        while step < args.steps:
            value = one_step(step)
            step += 1
            now = time.perf_counter()
            seconds, tick = seconds + now - tick, now
            recent = (recent + [value])[-100:]
            interval_losses.append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(recent):.4f}", refresh=False)
            if step % args.log_every == 0 or step == args.steps:
                rate = (step - invocations[-1]["start_step"]) / max(seconds - start_seconds, 1e-9)
                line = {"step": step, "loss": round(float(np.mean(interval_losses)), 5),
                        "lr": lr_schedule.get_last_lr()[0], "train_seconds": round(seconds, 1),
                        "steps_per_s": round(rate, 3)}
                with open(run_dir / "metrics.jsonl", "a") as log:
                    log.write(json.dumps(line) + "\n")
                tqdm.write(json.dumps(line))
                interval_losses = []
            if step % args.checkpoint_every == 0 and step < args.steps:
                record(finished=False)
            if periodic and periodic_every and (step % periodic_every == 0 or step == args.steps):
                periodic(step)
                unet.train()
            tick = time.perf_counter()  # checkpoints, grids and validation are not training time
            out_of_time = args.max_minutes and seconds - start_seconds >= 60 * args.max_minutes
            if step < args.steps and (stop or step == args.stop_at or out_of_time):
                bar.close()
                record(finished=False)
                tqdm.write(f"paused: checkpoint saved at step {step}; continue with --resume")
                return 130 if stop else 0
    finally:
        _restore_handlers(previous)
    bar.close()
    record(finished=True)
    if args.export:
        export_to(Path(args.export))
        tqdm.write(f"exported the EMA model to {args.export}")
    return 0


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a run resumes from (they will be redone)."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))


def export(unet: UNet2DModel, scheduler: DDPMScheduler, out: Path, info_file: Path | None = None) -> None:
    """Save a diffusers folder: ``unet/`` (safetensors) and ``scheduler/``, plus ``train_info.json``."""
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    DDPMScheduler.from_config(scheduler.config).save_pretrained(out / "scheduler")
    if info_file is not None and info_file.exists():
        shutil.copyfile(info_file, out / "train_info.json")


def _install_handlers(handler: Any) -> dict[int, Any]:
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread: no graceful stop, nothing else changes
            pass
    return previous


def _restore_handlers(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _hms(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def _channels(text: str) -> tuple[int, ...]:
    try:
        channels = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not 1 <= len(channels) <= 3 or not all(4 <= c <= 512 for c in channels):
        raise argparse.ArgumentTypeError("give 1 to 3 channel counts, each 4..512")
    return channels


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _add_common(parser: argparse.ArgumentParser) -> None:
    """Options every training subcommand shares: run length, optimiser, run folder, device."""
    parser.add_argument("--steps", type=_positive_int, default=5000, help="total optimiser steps (default 5000)")
    parser.add_argument("--batch-size", type=_positive_int, default=64, help="default 64")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak AdamW learning rate (default 5e-4)")
    parser.add_argument("--warmup", type=_non_negative_int, default=300,
                        help="linear warm-up steps before the cosine decay (default 300)")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    parser.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clip (default 1)")
    parser.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay (default 0.999)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and of every draw (default 0)")
    parser.add_argument("--out", required=True, help="run folder for checkpoints, samples and logs")
    parser.add_argument("--resume", action="store_true", help="continue from --out's checkpoint if there is one")
    parser.add_argument("--stop-at", type=_positive_int, help="pause (checkpoint, exit) after this step; "
                        "the learning-rate schedule still runs to --steps")
    parser.add_argument("--max-minutes", type=float, default=0.0,
                        help="pause after this many minutes of training in this invocation (0: no limit)")
    parser.add_argument("--checkpoint-every", type=_positive_int, default=500, help="steps (default 500)")
    parser.add_argument("--log-every", type=_positive_int, default=100,
                        help="steps between log lines (default 100)")
    parser.add_argument("--export", help="after the last step, save the EMA model as a diffusers folder here")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="default auto")
    parser.add_argument("--threads", type=_non_negative_int, default=0,
                        help="torch CPU threads (default: torch's choice)")


def _add_mnist(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "mnist", help="class-conditional DDPM on 28×28 digits",
        description="Train a class-conditional DDPM with classifier-free guidance on MNIST digits.")
    _add_common(parser)
    parser.add_argument("--channels", type=_channels, default=(16, 32, 64), help="UNet widths (default 16,32,64)")
    parser.add_argument("--layers-per-block", type=_positive_int, default=1, help="default 1")
    parser.add_argument("--no-attention", dest="attention", action="store_false",
                        help="no self-attention at the lowest resolution")
    parser.add_argument("--data", choices=("offline", "full", "folder"), default="offline", help="default offline")
    parser.add_argument("--data-dir", help="MNIST download folder (full) or image folder (folder)")
    parser.add_argument("--heldout-fraction", type=_probability, default=0.2,
                        help="share kept out of training for evaluation (default 0.2)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the held-out split (default 0)")
    parser.add_argument("--class-dropout", type=_probability, default=0.1,
                        help="probability of training a label as 'no class' (default 0.1)")
    parser.add_argument("--translate", type=int, default=0, choices=range(5), metavar="{0..4}",
                        help="random shifts of up to this many pixels (default 0)")
    parser.add_argument("--beta-schedule", choices=("linear", "cosine"), default="linear", help="default linear")
    parser.add_argument("--sample-every", type=_non_negative_int, default=1000, help="steps between sample grids; 0: none")
    parser.add_argument("--sample-guidance", type=float, default=2.0, help="guidance scale of the grids (default 2)")
    parser.add_argument("--grid-columns", type=_positive_int, default=8, help="samples per digit in a grid")
    parser.set_defaults(func=run_mnist)


SUBCOMMANDS = [_add_mnist]


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m diffusion.train`` parser with one subparser per model."""
    from diffusion.train import denoiser as train_denoiser  # each registers its subcommand and imports this module's helpers
    from diffusion.train import text2image as train_text2image

    parser = argparse.ArgumentParser(prog="python -m diffusion.train", description=__doc__.split("\n\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in (*SUBCOMMANDS, train_denoiser.add_subcommand, train_text2image.add_subcommand):
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the subcommand and return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = "python -m diffusion.train " + shlex.join(argv)
    try:
        return args.func(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
