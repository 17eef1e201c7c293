"""What every ``python -m diffusion.train`` subcommand shares: the loop, the EMA, checkpoints, the run folder.

A subcommand (:mod:`~diffusion.train.mnist`, :mod:`~diffusion.train.denoiser`,
:mod:`~diffusion.train.text2image`) builds its model, optimiser and data and hands
:func:`run_loop` one function per optimiser step; the loop resumes, logs, checkpoints,
pauses and exports. :func:`add_run_options` registers the options the loop and
:func:`prepare_run` read, so every subcommand spells them the same way.

Determinism: every random draw of step ``s`` (batch order, t, ε, class dropout,
shifts) comes from generators seeded by ``(seed, s)`` (:func:`step_generator`,
:func:`batch_indices`), and the checkpoint holds the weights, the EMA, the AdamW
moments and the learning-rate schedule position, so a resumed run repeats the
uninterrupted one.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
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
from diffusers import DDPMScheduler
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from diffusion import cli
from diffusion.devices import describe_device, resolve_device
from diffusion.errors import InputError

CHECKPOINT = "checkpoint"


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


class EMA:
    """Exponential moving average of the weights, held as a full model copy.

    θ_ema ← d θ_ema + (1 - d) θ with d = min(decay, (1 + s) / (10 + s)) at step s,
    the warm-up diffusers' ``EMAModel`` uses by default. Keeping a whole
    model (not a list of tensors) lets the EMA sample and ``save_pretrained``
    directly.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1.0 - d)


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


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    state = optimizer.state_dict()
    tensors = {f"{index}.{name}": value.detach().cpu().contiguous()
               for index, entry in state["state"].items() for name, value in entry.items()}
    return tensors, state["param_groups"]


def save_checkpoint(run_dir: Path, unet: torch.nn.Module, ema: EMA, optimizer: torch.optim.Optimizer,
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


def load_checkpoint(folder: Path, unet: torch.nn.Module, ema: EMA, optimizer: torch.optim.Optimizer,
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
    cli.use_threads(args.threads)
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


def run_loop(args: argparse.Namespace, run_dir: Path, checkpoint: Path | None, unet: torch.nn.Module,
             ema: EMA, optimizer: torch.optim.Optimizer, lr_schedule: Any, settings: dict[str, Any],
             base_info: dict[str, Any], one_step: Callable[[int], float],
             periodic: Callable[[int], None] | None, periodic_every: int,
             export_to: Callable[[Path], None]) -> int:
    """The training loop every subcommand shares: resume, steps, logs, checkpoints, pause, export.

    Args:
        args: Parsed options of :func:`add_run_options` (steps, resume, stop/pause, logging, export).
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


def export(unet: torch.nn.Module, scheduler: DDPMScheduler, out: Path, info_file: Path | None = None) -> None:
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


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options every training subcommand shares: run length, optimiser, run folder, device."""
    parser.add_argument("--steps", type=cli.positive_int, default=5000, help="total optimiser steps (default 5000)")
    parser.add_argument("--batch-size", type=cli.positive_int, default=64, help="default 64")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak AdamW learning rate (default 5e-4)")
    parser.add_argument("--warmup", type=cli.non_negative_int, default=300,
                        help="linear warm-up steps before the cosine decay (default 300)")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    parser.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clip (default 1)")
    parser.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay (default 0.999)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and of every draw (default 0)")
    parser.add_argument("--out", required=True, help="run folder for checkpoints, samples and logs")
    parser.add_argument("--resume", action="store_true", help="continue from --out's checkpoint if there is one")
    parser.add_argument("--stop-at", type=cli.positive_int, help="pause (checkpoint, exit) after this step; "
                        "the learning-rate schedule still runs to --steps")
    parser.add_argument("--max-minutes", type=float, default=0.0,
                        help="pause after this many minutes of training in this invocation (0: no limit)")
    parser.add_argument("--checkpoint-every", type=cli.positive_int, default=500, help="steps (default 500)")
    parser.add_argument("--log-every", type=cli.positive_int, default=100,
                        help="steps between log lines (default 100)")
    parser.add_argument("--export", help="after the last step, save the EMA model as a diffusers folder here")
    cli.add_device_argument(parser)
    cli.add_threads_argument(parser)
