"""``python -m diffusion.bench applications``: lesson 7's operations, timed side by side in one run.

On the shipped digit model and autoencoder, one CPU thread unless ``--threads``, each the
best of ``--repeat``:

(a) an anomaly score of one picture, diffusion and autoencoder (target: ≤ 0.3 s);
(b) an export of 100 generated digits, zip included (target: ≤ 10 s);
(c) inpainting (RePaint) and super-resolution (DDNM) of 4 fills at their defaults, against
    lesson 4's DDIM-50 sampling of 4 digits (target: about as fast: a ratio near 1).
"""

from __future__ import annotations

import argparse
import json

from diffusion.bench.timing import best_time


def run(args: argparse.Namespace) -> int:
    """Print the table (and write ``--json``)."""
    import torch

    from diffusion.datasets import digits
    from diffusion.lessons.applications import anomaly, augment, outliers
    from diffusion.lessons.applications.inpaint import InpaintRequest, inpaint, preset_mask
    from diffusion.lessons.applications.superres import SuperResRequest, super_resolve
    from diffusion.lessons.sampling import SampleRequest, sample
    from diffusion.models import registry

    torch.set_num_threads(args.threads)
    unet, config = registry.load_unet_model("mnist", "cpu")
    images, _ = digits.mnist_offline()
    digit = images[-1].astype("float32") / 255.0  # a digit of the built-in set, scaled to [0, 1]
    picture = next(iter(outliers.examples().values()))
    rows: dict[str, float] = {}
    for method in anomaly.METHODS:
        anomaly.score_picture(picture, method=method)  # warm: the reference scores and the model load once
        rows[f"anomaly score ({method})"] = best_time(lambda m=method: anomaly.score_picture(picture, method=m),
                                                       args.repeat)[0]
    export = augment.ExportRequest(per_class=10)
    rows["export of 100 digits + zip"] = best_time(
        lambda: augment.to_zip(augment.generate_dataset(unet, config, export.validated(
            config["num_train_timesteps"]))), args.repeat)[0]
    ddim = SampleRequest(sampler="ddim", num_inference_steps=50, batch_size=4, digit="3", guidance_scale=1.5)
    rows["lesson 4: DDIM-50, 4 digits"] = best_time(lambda: sample(unet, config, ddim, record=False), args.repeat)[0]
    fill = InpaintRequest(image=digit, mask=preset_mask("top"), digit=3).validated(config["num_train_timesteps"])
    rows["inpainting, 4 fills"] = best_time(lambda: inpaint(unet, config, fill), args.repeat)[0]
    upscale = SuperResRequest(image=digit, factor=4, digit=3).validated(config["num_train_timesteps"])
    rows["super-resolution ×4, 4 fills"] = best_time(lambda: super_resolve(unet, config, upscale), args.repeat)[0]

    base = rows["lesson 4: DDIM-50, 4 digits"]
    print(f"lesson 7 on the CPU ({torch.get_num_threads()} thread(s)), best of {args.repeat}")
    print("| operation | seconds | ÷ DDIM-50 |\n|---|---|---|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.3f} | {seconds / base:.2f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"threads": torch.get_num_threads(), "repeat": args.repeat, "seconds": rows}, out, indent=2)
    return 0


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Register ``applications``."""
    p = sub.add_parser("applications", help="lesson 7: anomaly score, export, inpainting, super-resolution")
    p.add_argument("--repeat", type=int, default=3, help="best of N (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as one model job gets)")
    p.add_argument("--json", help="write the figures here")
    p.set_defaults(func=run)
