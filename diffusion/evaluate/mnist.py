"""``python -m diffusion.evaluate mnist``: how good is lesson 4's digit DDPM?

It measures, in one run:

1. **A referee classifier.** A small CNN of our own, trained on the split that the
   diffusion model never saw (``heldout_idx`` of its ``train_info.json``), so its judgement
   does not share the generator's training data. Its accuracy is measured on real digits
   it never saw: the generator's training split.
2. **Class-conditional accuracy.** Digits generated for each class 0-9 are classified;
   the share classified as the class asked for, per class, at guidance 1 (the plain
   conditional model) and at the app's default guidance.
3. **Fréchet distance** (Heusel et al. 2017, the FID formula) between generated and real
   digits, in the classifier's 128-d penultimate features rather than Inception's:

       d² = ||μ_g - μ_r||² + Tr(Σ_g + Σ_r - 2 (Σ_g Σ_r)^{1/2})

   for DDPM with 1000 steps, DDIM with 100, 50, 20 and 10 steps (η = 0) and DDIM-50 at
   η = 1, all at the default guidance and from the same starting noise. The **floor** is
   the same distance for real digits (as many as each generated set) that are not in the
   reference set: no generator can be expected to beat it at this sample size.
4. **Wall time** of each sampler, measured in the same run on the same batches.

Generated digits are rounded to 8 bits first, like the PNGs the app hands out. The
report is printed as a Markdown table (for the model card) and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from diffusion import cli
from diffusion.datasets import digits as data
from diffusion.devices import resolve_device
from diffusion.lessons.sampling.sampler import SampleRequest, sample
from diffusion.models import registry as models

FEATURES = 128


class DigitClassifier(nn.Module):
    """Two conv blocks and a 128-unit layer: ``features`` feed the Fréchet distance."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 28 → 14
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 14 → 7
        )
        self.hidden = nn.Linear(64 * 7 * 7, FEATURES)
        self.head = nn.Linear(FEATURES, data.NUM_CLASSES)
        self.dropout = nn.Dropout(0.3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``(B, 128)`` of images on the ``[-1, 1]`` scale."""
        return F.relu(self.hidden(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def _shift(x: torch.Tensor, generator: torch.Generator, pixels: int = 2) -> torch.Tensor:
    """Random translations by up to ``pixels`` (background -1 fills the gap)."""
    padded = F.pad(x, (pixels,) * 4, value=-1.0)
    out = torch.empty_like(x)
    offsets = torch.randint(0, 2 * pixels + 1, (x.shape[0], 2), generator=generator)
    for k, (dy, dx) in enumerate(offsets.tolist()):
        out[k] = padded[k, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
    return out


def train_classifier(images: torch.Tensor, labels: torch.Tensor, steps: int = 1500, seed: int = 0,
                     batch_size: int = 64, device: torch.device | str = "cpu") -> DigitClassifier:
    """Train :class:`DigitClassifier` with Adam, random shifts and dropout.

    Args:
        images: ``(N, 1, 28, 28)`` on the ``[-1, 1]`` scale.
        labels: ``(N,)`` int64 in 0..9.
        steps: Optimiser steps.
        seed: Seed of the weights, batches and shifts.
    """
    torch.manual_seed(seed)
    model = DigitClassifier().to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(1, steps))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
        x = _shift(images[index], generator).to(device)
        loss = F.cross_entropy(model(x), labels[index].to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
    return model.eval().requires_grad_(False)


@torch.inference_mode()
def predict(model: DigitClassifier, images: torch.Tensor, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """``(features (N, 128) float64, predicted class (N,))`` for ``[-1, 1]`` images."""
    device = next(model.parameters()).device
    feats, preds = [], []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device)
        f = model.features(x)
        feats.append(f.double().cpu())
        preds.append(model.head(f).argmax(1).cpu())
    return torch.cat(feats).numpy(), torch.cat(preds).numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """d² between Gaussians fitted to the rows of ``a`` and ``b`` (the FID formula).

    Raises:
        ValueError: Fewer than two rows, or different feature sizes.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (N, D) feature sets with N >= 2, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr((Σa Σb)^½) = Σ sqrt(eig(Σa^½ Σb Σa^½)): a symmetric form whose eigenvalues are
    # real and non-negative, so no complex parts or singular-matrix warnings.
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    middle = root_a @ cov_b @ root_a
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    d2 = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root
    return float(max(0.0, d2))


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Round ``[-1, 1]`` images to the 256 levels of an 8-bit PNG."""
    levels = torch.round((x.clamp(-1, 1) + 1) * 127.5)
    return levels / 127.5 - 1


@dataclass
class Generated:
    """Digits made by one sampler setting, with their classes and wall time."""

    name: str
    sampler: str
    steps: int
    eta: float
    guidance_scale: float
    images: torch.Tensor  # (N, 1, 28, 28) on [-1, 1], 8-bit levels
    labels: torch.Tensor  # (N,)
    seconds: float


def generate(unet: nn.Module, scheduler_config: Any, name: str, sampler: str, steps: int, eta: float,
             guidance_scale: float, per_class: int, seed: int, device: torch.device,
             precision: str = "fp32") -> Generated:
    """``per_class`` digits of every class, one batch per class, seeds ``seed + class``.

    Every sampler setting gets the same seeds, hence the same starting noise per class.
    """
    images, labels, seconds = [], [], 0.0
    for digit in range(data.NUM_CLASSES):
        request = SampleRequest(sampler=sampler, num_inference_steps=steps, eta=eta, seed=seed + digit,
                                batch_size=per_class, digit=str(digit), guidance_scale=guidance_scale)
        run = sample(unet, scheduler_config, request, device=device, record=False, max_batch_size=per_class,
                     precision=precision)
        images.append(quantise(run.samples))
        labels.append(run.labels)
        seconds += run.seconds
    return Generated(name, sampler, steps, eta, guidance_scale, torch.cat(images), torch.cat(labels), seconds)


def _per_class_accuracy(pred: np.ndarray, labels: np.ndarray) -> list[float]:
    return [float((pred[labels == c] == c).mean()) if (labels == c).any() else math.nan
            for c in range(data.NUM_CLASSES)]


def _balanced_pick(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(data.NUM_CLASSES)]
    return np.sort(np.concatenate(picks))


def _split_from_model(model_dir: Path, images: np.ndarray, labels: np.ndarray) -> data.Split:
    """The generator's own train / held-out split, from its ``train_info.json`` when present."""
    info_path = model_dir / "train_info.json"
    if info_path.is_file():
        settings = json.loads(info_path.read_text()).get("settings", {})
        if settings.get("data", "offline") == "offline" and "heldout_fraction" in settings:
            return data.split_train_heldout(images, labels, settings["heldout_fraction"],
                                            settings.get("split_seed", 0))
    return data.split_train_heldout(images, labels)


def _shown(path: Path) -> str:
    """``path`` relative to the working folder when it is inside it (reports stay portable)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def run_mnist(args: argparse.Namespace) -> int:
    """Evaluate the digit model; see the module docstring."""
    cli.use_threads(args.threads)
    device = resolve_device(args.device)
    model_dir = Path(args.model_dir) if args.model_dir else models.MODELS["mnist"].path
    unet, scheduler_config = models.load_unet_folder(model_dir, device, name=str(model_dir))
    guidance = SampleRequest().guidance_scale if args.guidance is None else args.guidance
    print(f"model: {_shown(model_dir)} · device: {device} · torch threads: {torch.get_num_threads()}")

    images, labels = data.mnist_offline()
    split = _split_from_model(model_dir, images, labels)
    start = time.perf_counter()
    clf_x, clf_y = data.to_model_range(split.heldout_images), torch.as_tensor(split.heldout_labels, dtype=torch.long)
    classifier = train_classifier(clf_x, clf_y, steps=args.classifier_steps, seed=args.seed, device=device)
    real_x = data.to_model_range(split.train_images)
    real_y = np.asarray(split.train_labels)
    real_feats, real_pred = predict(classifier, real_x)
    real_acc = float((real_pred == real_y).mean())
    print(f"classifier: trained on {len(clf_y)} held-out digits in {time.perf_counter() - start:.0f} s; "
          f"accuracy on {len(real_y)} unseen real digits: {100 * real_acc:.2f}%")

    n_gen = args.samples_per_class * data.NUM_CLASSES
    rng = np.random.default_rng(args.seed)
    floor_idx = _balanced_pick(real_y, args.samples_per_class, rng)
    rest = np.setdiff1d(np.arange(len(real_y)), floor_idx)
    ref_idx = np.sort(rng.choice(rest, min(args.reference, len(rest)), replace=False))
    ref_feats = real_feats[ref_idx]
    floor = frechet_distance(real_feats[floor_idx], ref_feats)
    print(f"Fréchet floor (real {len(floor_idx)} vs real reference {len(ref_idx)}): {floor:.3f}")

    settings = [(f"DDPM-{args.ddpm_steps}", "ddpm", args.ddpm_steps, 0.0, guidance, "fp32")]
    settings += [(f"DDIM-{n}", "ddim", n, 0.0, guidance, "fp32") for n in args.ddim_steps]
    low = "fp16" if device.type == "cuda" else "bf16"  # the app's reduced precision here (choose_precision)
    settings += [(f"DDIM-{n} {low}", "ddim", n, 0.0, guidance, low) for n in args.low_precision_steps]
    settings += [(f"DDIM-{args.eta_steps} η=1", "ddim", args.eta_steps, 1.0, guidance, "fp32")]
    if guidance != 1.0:
        settings += [(f"DDIM-{args.eta_steps} s=1", "ddim", args.eta_steps, 0.0, 1.0, "fp32")]
    rows = []
    for name, sampler, steps, eta, scale, precision in settings:
        gen = generate(unet, scheduler_config, name, sampler, steps, eta, scale, args.samples_per_class,
                       args.seed, device, precision)
        feats, pred = predict(classifier, gen.images)
        y = gen.labels.numpy()
        row = {"name": name, "sampler": sampler, "steps": steps, "eta": eta, "guidance_scale": scale,
               "precision": precision,
               "samples": int(len(y)), "seconds": round(gen.seconds, 2),
               "frechet": round(frechet_distance(feats, ref_feats), 3),
               "accuracy": round(float((pred == y).mean()), 4),
               "per_class_accuracy": [round(v, 3) for v in _per_class_accuracy(pred, y)]}
        rows.append(row)
        print(f"  {name:<16} s={scale:<4} FD {row['frechet']:8.3f}  accuracy {100 * row['accuracy']:6.2f}%  "
              f"{row['seconds']:8.1f} s", flush=True)

    by_name = {r["name"]: r for r in rows}
    ddpm, ddim50 = by_name[f"DDPM-{args.ddpm_steps}"], by_name.get("DDIM-50")
    default_row = ddim50 or rows[1]
    cond_row = by_name.get(f"DDIM-{args.eta_steps} s=1", default_row)
    checks = {
        "conditional_accuracy_default_guidance": default_row["accuracy"],
        "accuracy_target_0.95": default_row["accuracy"] >= 0.95,
        "ddpm_over_floor": round(ddpm["frechet"] / max(floor, 1e-12), 2),
        "ddpm_within_2x_floor": ddpm["frechet"] <= 2 * floor,
    }
    if ddim50:
        checks.update({
            "ddim50_over_ddpm": round(ddim50["frechet"] / max(ddpm["frechet"], 1e-12), 2),
            "ddim50_within_1.5x_ddpm": ddim50["frechet"] <= 1.5 * ddpm["frechet"],
            "ddpm_over_ddim50_time": round(ddpm["seconds"] / max(ddim50["seconds"], 1e-9), 1),
            "ddim50_15x_faster": ddpm["seconds"] >= 15 * ddim50["seconds"],
        })
    report = {
        "model_dir": _shown(model_dir), "device": str(device), "torch_threads": torch.get_num_threads(),
        "default_guidance": guidance, "samples_per_setting": n_gen, "reference_real": len(ref_idx),
        "classifier": {"train_heldout_digits": len(clf_y), "steps": args.classifier_steps,
                       "test_real_digits": len(real_y),
                       "accuracy_real_unseen": round(real_acc, 4),
                       "per_class_accuracy_real": [round(v, 3) for v in _per_class_accuracy(real_pred, real_y)]},
        "frechet_floor_real_vs_real": round(floor, 3), "rows": rows, "checks": checks,
        "per_class": {"guidance_1": cond_row["per_class_accuracy"],
                      f"guidance_{guidance:g}": default_row["per_class_accuracy"]},
    }
    print()
    print(markdown(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(f"\nwrote {args.out}")
    return 0


def markdown(report: dict[str, Any]) -> str:
    """The report's tables in Markdown, for the model card."""
    floor = report["frechet_floor_real_vs_real"]
    lines = [
        f"Referee classifier accuracy on {report['classifier']['test_real_digits']} unseen real digits: "
        f"**{100 * report['classifier']['accuracy_real_unseen']:.2f}%**. "
        f"Fréchet floor (real vs real, {report['samples_per_setting']} digits): **{floor:.3f}**.",
        "",
        "| sampler | guidance | Fréchet distance | × floor | class accuracy | wall time (s) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['name']} | {r['guidance_scale']:g} | {r['frechet']:.3f} | "
                     f"{r['frechet'] / max(floor, 1e-12):.2f} | {100 * r['accuracy']:.1f}% | {r['seconds']:.1f} |")
    lines += ["", "| guidance | " + " | ".join(str(c) for c in range(data.NUM_CLASSES)) + " |",
              "| --- |" + " --- |" * data.NUM_CLASSES]
    for key, values in report["per_class"].items():
        lines.append(f"| {key.split('_', 1)[1]} | " + " | ".join(f"{100 * v:.0f}%" for v in values) + " |")
    lines += ["", "Checks: " + ", ".join(f"{k} = {v}" for k, v in report["checks"].items())]
    return "\n".join(lines)


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Register ``mnist`` with ``python -m diffusion.evaluate``."""
    p = sub.add_parser("mnist", help="the class-conditional digit DDPM of lesson 4")
    p.add_argument("--model-dir", help="diffusers folder (default: the shipped assets/models/mnist-ddpm)")
    p.add_argument("--samples-per-class", type=cli.positive_int, default=50,
                   help="generated digits per class and setting (default 50, i.e. 500 per setting)")
    p.add_argument("--reference", type=cli.positive_int, default=2000, help="real reference digits (default 2000)")
    p.add_argument("--guidance", type=float, help="default guidance to test (default: the app's)")
    p.add_argument("--ddpm-steps", type=cli.positive_int, default=1000, help="default 1000")
    p.add_argument("--ddim-steps", type=cli.positive_int_list, default=[100, 50, 20, 10], help="default 100,50,20,10")
    p.add_argument("--low-precision-steps", type=cli.positive_int_list, default=[50, 20],
                   help="DDIM rows run again in bf16 (fp16 on CUDA), the app's precision where the "
                        "hardware has it (default 50,20)")
    p.add_argument("--eta-steps", type=cli.positive_int, default=50, help="DDIM steps of the η = 1 row (default 50)")
    p.add_argument("--classifier-steps", type=cli.positive_int, default=1500, help="default 1500")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    cli.add_device_argument(p)
    cli.add_threads_argument(p)
    p.add_argument("--out", help="write the JSON report here")
    p.set_defaults(run=run_mnist)
