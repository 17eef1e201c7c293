"""``python -m diffusion.evaluate anomaly``: how well do lesson 7's two scores spot pictures that are not digits?

Normal pictures: the 1,000 held-out real digits, the split neither model was trained on
(``heldout_fraction`` / ``split_seed`` from the digit DDPM's ``train_info.json``).
Anomalies, all made offline (:mod:`diffusion.lessons.applications.outliers`): Latin
letters in DejaVu Sans, Chinese characters in WenQuanYi Micro Hei, lesson 6's shapes at
28×28, noise, and the held-out digits turned upside down.

For each set and each score it reports the AUROC (the chance that an anomaly scores
higher than a real digit) and the false-alarm rate at 95 % detection (the share of real
digits flagged by the threshold that catches 95 % of the set). The diffusion score's
error term alone (``log e_(1)``, without the class margin) is reported too, to show what
the margin adds, and so is the AUROC per letter and per digit class of the upside-down set.

``--write-reference`` stores the held-out digits' scores of both methods in
``assets/examples/anomaly/reference_scores.json``, keyed by the score settings and the
models' weight digests: the histogram and the threshold of the lesson's tab.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusion import cli
from diffusion.datasets import digits as data
from diffusion.devices import resolve_device
from diffusion.lessons.applications import anomaly
from diffusion.lessons.applications.outliers import (
    SETS, auroc, false_alarm_at_detection, letter_labels, outlier_sets,
)
from diffusion.models import registry

TARGET_AUROC = 0.95


def heldout_split() -> data.Split:
    """The digit DDPM's own train / held-out split of the offline digits (from its ``train_info.json``)."""
    images, labels = data.mnist_offline()
    info = registry.MODELS["mnist"].path / "train_info.json"
    settings = json.loads(info.read_text()).get("settings", {}) if info.is_file() else {}
    return data.split_train_heldout(images, labels, settings.get("heldout_fraction", 0.2),
                                    settings.get("split_seed", 0))


def _score_all(method: str, sets: dict[str, np.ndarray], device: torch.device) -> tuple[dict[str, Any], float]:
    out, start = {}, time.perf_counter()
    for name, digits in sets.items():
        out[name] = anomaly.compute_scores(method, digits, device)
        print(f"  {method:<11} {name:<12} {len(digits):5d} pictures  {time.perf_counter() - start:7.1f} s",
              flush=True)
    return out, time.perf_counter() - start


def evaluate(sets: dict[str, np.ndarray], methods: tuple[str, ...], device: torch.device) -> dict[str, Any]:
    """AUROC and false alarms at 95 % detection of each method on each set against ``sets["heldout"]``."""
    timed = {m: _score_all(m, sets, device) for m in methods}
    scored = {m: result for m, (result, _) in timed.items()}
    pictures = sum(len(d) for d in sets.values())
    variants = {m: {name: s.scores for name, s in scored[m].items()} for m in methods}
    if "diffusion" in methods:
        variants["diffusion_error_only"] = {name: np.log(s.class_errors.min(axis=1))
                                            for name, s in scored["diffusion"].items()}
    rows = []
    for name in sets:
        if name == "heldout":
            continue
        row: dict[str, Any] = {"set": name, "pictures": int(len(sets[name]))}
        for variant, scores in variants.items():
            row[f"auroc_{variant}"] = round(auroc(scores["heldout"], scores[name]), 4)
            row[f"fpr95_{variant}"] = round(false_alarm_at_detection(scores["heldout"], scores[name]), 4)
        rows.append(row)
    return {"rows": rows, "scores": variants, "heldout_scores": {m: variants[m]["heldout"] for m in methods},
            "seconds_per_picture": {m: round(seconds / pictures, 4) for m, (_, seconds) in timed.items()}}


def breakdown(scores: dict[str, dict[str, np.ndarray]], letters: list[str], heldout_labels: np.ndarray
              ) -> dict[str, Any]:
    """AUROC per letter (letters set) and per digit class (upside-down set) of each score variant.

    Args:
        scores: ``{variant: {set: scores}}`` with ``heldout``, ``letters`` and ``upside_down``.
        letters: The letter of each picture of the letters set.
        heldout_labels: The class of each held-out digit (hence of each upside-down one).
    """
    letters_arr, labels = np.asarray(letters), np.asarray(heldout_labels)
    out: dict[str, Any] = {"per_letter": {}, "upside_down_per_digit": {}}
    for variant, by_set in scores.items():
        ref = by_set["heldout"]
        out["per_letter"][variant] = {c: round(auroc(ref, by_set["letters"][letters_arr == c]), 3)
                                      for c in sorted(set(letters))}
        out["upside_down_per_digit"][variant] = {
            int(d): round(auroc(ref, by_set["upside_down"][labels == d]), 3) for d in np.unique(labels)}
    return out


def markdown(report: dict[str, Any]) -> str:
    """The report's table in Markdown, for the model card."""
    variants = [v for v in ("diffusion", "autoencoder", "diffusion_error_only") if f"auroc_{v}" in report["rows"][0]]
    names = {"diffusion": "diffusion", "autoencoder": "autoencoder", "diffusion_error_only": "diffusion, error only"}
    head = " | ".join(f"AUROC {names[v]}" for v in variants) + " | " + " | ".join(
        f"FPR@95 {names[v]}" for v in variants)
    lines = [f"| set | pictures | {head} |", "| --- | --- |" + " --- |" * (2 * len(variants))]
    for r in report["rows"]:
        lines.append(f"| {r['set']} | {r['pictures']} | " + " | ".join(f"{r[f'auroc_{v}']:.3f}" for v in variants)
                     + " | " + " | ".join(f"{100 * r[f'fpr95_{v}']:.1f}%" for v in variants) + " |")
    return "\n".join(lines)


def write_reference(heldout_scores: dict[str, np.ndarray], split: data.Split, path: Path) -> None:
    """Write the reference file :func:`~diffusion.lessons.applications.anomaly.reference_scores` reads."""
    payload = dict(anomaly.reference_key(),
                   split={"heldout": int(len(split.heldout_idx)), "heldout_idx_sha": _index_digest(split)},
                   heldout={m: [float(f"{v:.7g}") for v in s] for m, s in heldout_scores.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=0) + "\n")


def _index_digest(split: data.Split) -> str:
    return hashlib.sha256(np.asarray(split.heldout_idx, dtype=np.int64).tobytes()).hexdigest()[:16]


def run_anomaly(args: argparse.Namespace) -> int:
    """Evaluate both anomaly scores; see the module docstring."""
    cli.use_threads(args.threads)
    device = resolve_device(args.device)
    methods = args.methods
    if args.write_reference and (args.heldout or set(methods) != set(anomaly.METHODS)):
        print("error: --write-reference needs every held-out digit and both methods", flush=True)
        return 2
    split = heldout_split()
    heldout = split.heldout_images[:args.heldout or None]
    sets = {"heldout": heldout, **outlier_sets(heldout, n=args.per_set)}
    print(f"device: {device} · torch threads: {torch.get_num_threads()} · held-out digits: {len(heldout)} · "
          f"pictures per generated set: {args.per_set}", flush=True)
    start = time.perf_counter()
    report = evaluate(sets, methods, device)
    report.update(device=str(device), torch_threads=torch.get_num_threads(), seconds=round(time.perf_counter() - start, 1),
                  settings=anomaly.reference_key()["settings"], sets=list(SETS))
    heldout_scores = report.pop("heldout_scores")
    report["breakdown"] = breakdown(report.pop("scores"), letter_labels(args.per_set), split.heldout_labels[:len(heldout)])
    if "diffusion" in methods:
        report["target_auroc_0.95_except_upside_down"] = all(
            r["auroc_diffusion"] >= TARGET_AUROC for r in report["rows"] if r["set"] != "upside_down")
    print(f"\nseconds per picture: {report['seconds_per_picture']}\n")
    print(markdown(report))
    for variant, per_letter in report["breakdown"]["per_letter"].items():
        worst = sorted(per_letter.items(), key=lambda item: item[1])[:10]
        print(f"\n{variant}: letters with AUROC >= {TARGET_AUROC}: "
              f"{sum(v >= TARGET_AUROC for v in per_letter.values())} of {len(per_letter)}; least detected: "
              + ", ".join(f"{c} {v:.2f}" for c, v in worst))
        print(f"{variant}: upside-down AUROC by digit: " + ", ".join(
            f"{d}: {v:.2f}" for d, v in report["breakdown"]["upside_down_per_digit"][variant].items()))
    if args.write_reference:
        write_reference(heldout_scores, split, anomaly.REFERENCE_FILE)
        print(f"\nwrote {anomaly.REFERENCE_FILE.name}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0


def _methods(text: str) -> tuple[str, ...]:
    chosen = tuple(m.strip() for m in text.split(",") if m.strip())
    if not chosen or not set(chosen) <= set(anomaly.METHODS):
        raise argparse.ArgumentTypeError(f"choose from {', '.join(anomaly.METHODS)}, got {text!r}")
    return chosen


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Register ``anomaly`` with ``python -m diffusion.evaluate``."""
    p = sub.add_parser("anomaly", help="lesson 7's anomaly scores: AUROC on letters, CJK, shapes, noise, upside-down")
    p.add_argument("--per-set", type=cli.positive_int, default=500,
                   help="pictures per generated set: letters, CJK, shapes, noise (default 500)")
    p.add_argument("--heldout", type=cli.non_negative_int, default=0,
                   help="use only the first N held-out digits (default 0: all 1,000)")
    p.add_argument("--methods", type=_methods, default=anomaly.METHODS,
                   help="comma-separated: diffusion, autoencoder (default both)")
    p.add_argument("--write-reference", action="store_true",
                   help="store the held-out digits' scores for the lesson's histogram and threshold")
    cli.add_device_argument(p)
    cli.add_threads_argument(p)
    p.add_argument("--json", help="write the JSON report here")
    p.set_defaults(run=run_anomaly)
