"""Benchmarks for the lessons, run from the command line.

Usage::

    python -m diffusion.bench heat [--repeat N]
    python -m diffusion.bench noising [--moves N]
    python -m diffusion.bench sampling [--model-dir DIR | --random-tiny] [--repeat N]
    python -m diffusion.bench denoise [--size 384] [--repeat N]
    python -m diffusion.bench text2image [--steps 30] [--repeat N] [--sd15]
    python -m diffusion.bench load [--students 30] [--seconds 60]

Subcommands:

noising
    Lesson 2's slider on a 256x256 example image with T = 1000: a cold first query of
    the step-by-step chain, then seeded random jumps of t with a warm chain, timing the
    picture path (x_t both ways, noise, strip, display conversion) and the two plots
    (rendered to PNG as the app sends them). Prints median and worst times.

heat
    The textbook FTCS problem (L = 100, T = 50, N = 1000 points, M = 5000 steps,
    D = 0.1, a unit spike at the middle node, ends fixed at zero). Times the classic
    double Python loop once and the vectorised FTCS (best of ``--repeat`` runs),
    checks that they agree to 1e-12 (exit status 1 if not), prints both with the
    speed-up, and adds Crank-Nicolson on the same grid for comparison.

sampling
    Lesson 3's sampler on the shipped digit model (or ``--model-dir``, or a random
    tiny UNet with ``--random-tiny``, which times only the loop's overhead). In one
    run: (a) ``sampling.sample`` with recording and a no-op callback against a bare
    diffusers loop with the same scheduler, seed and guidance batching (best of
    ``--repeat``, alternating, with their largest pixel difference; exit status 1
    if they disagree); (b) DDIM with ``--steps`` steps against DDPM with all T steps.

denoise
    Lesson 4's comparison on a colour photo (scikit-image's astronaut) at the tab's working size, σ = 25:
    wall and CPU seconds of every method (best of ``--repeat``), each also as a ratio
    to BM3D, plus the model's first-call (cold) time. Quality is measured by
    ``python -m diffusion.evaluate denoise``.

text2image
    Lesson 5: see :mod:`diffusion.bench.text2image`.

load
    A classroom of simulated students on one server: see :mod:`diffusion.bench.load`.

Each subcommand is a ``_add_<name>`` function that registers its parser and sets
``func``; further lessons add theirs to ``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from diffusion.lessons.heat.solver import (
    HeatParams, crank_nicolson, ftcs, ftcs_textbook, initial_condition, make_grid,
)

TOLERANCE = 1e-12


def _best_time(run: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Smallest wall time of ``repeat`` runs (the least disturbed by other processes)."""
    best, value = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        value = run()
        best = min(best, time.perf_counter() - start)
    return best, value


def run_heat(args: argparse.Namespace) -> int:
    """Time the textbook loop against the vectorised FTCS and Crank-Nicolson."""
    params = HeatParams(initial_condition="spike", diffusivity=0.1, length=100.0,
                        n_points=1000, t_end=50.0, n_steps=5000, scheme="ftcs",
                        boundary="dirichlet").validated()
    x, dx = make_grid(params.length, params.n_points, params.boundary)
    u0 = initial_condition(params, x)
    r = params.diffusivity * (params.t_end / params.n_steps) / dx**2
    print(f"heat: N = {params.n_points}, M = {params.n_steps}, D = {params.diffusivity}, "
          f"L = {params.length}, T = {params.t_end}, r = {r:.4f}")

    loop_s, reference = _best_time(lambda: ftcs_textbook(u0, r, params.n_steps), 1)
    fast_s, march = _best_time(lambda: ftcs(u0, r, params.n_steps, "dirichlet"), args.repeat)
    cn_s, _ = _best_time(lambda: crank_nicolson(u0, r, params.n_steps, "dirichlet"),
                         args.repeat)
    difference = float(np.max(np.abs(march.frames[-1] - reference)))

    rows = [("textbook loop (1 run)", loop_s),
            (f"vectorised FTCS (best of {args.repeat})", fast_s),
            (f"Crank-Nicolson (best of {args.repeat})", cn_s)]
    print(f"{'method':<34}{'seconds':>12}{'speed-up':>12}")
    for name, seconds in rows:
        print(f"{name:<34}{seconds:>12.4f}{loop_s / seconds:>11.1f}x")
    verdict = "ok" if difference <= TOLERANCE else "FAILED"
    print(f"max |vectorised - textbook| = {difference:.3e} (tolerance {TOLERANCE:g}): {verdict}")
    return 0 if difference <= TOLERANCE else 1


def _add_heat(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "heat", help="textbook FTCS loop vs vectorised FTCS vs Crank-Nicolson",
        description="Lesson 1: time the heat-equation solvers on the textbook problem.")
    parser.add_argument("--repeat", type=_positive_int, default=5,
                        help="runs of each fast solver; the best time is shown (default 5)")
    parser.set_defaults(func=run_heat)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def run_noising(args: argparse.Namespace) -> int:
    """Time what one move of the forward-noising slider costs."""
    import io

    from diffusion import images
    from diffusion.lessons.noising import process as noising
    from diffusion.lessons.noising import figures as noising_plots
    from diffusion.examples import list_examples

    path = next(p for p in list_examples() if p.stem == "astronaut")
    x0, _ = images.load_image(path, max_side=256)
    schedule, T, seed = "linear", 1000, 0
    chain = noising.StepwiseChain(x0, noising.get_schedule(schedule, T), seed)
    strip_ts = [0, 50, 100, 250, 500, 750, 1000]

    def pictures(t: int) -> noising.ForwardResult:
        result = noising.forward_noise(x0, schedule, T, t, seed, chain=chain)
        frames = noising.noise_strip(x0, schedule, T, seed, strip_ts)
        for image in (result.x_t, result.x_t_stepwise, *frames):
            noising.to_display(image)
        noising.to_display(result.noise, lo=-3.0, hi=3.0)
        return result

    def plots(result: noising.ForwardResult) -> None:
        noising_plots.schedules_png(schedule, T, result.t)  # as the tab draws it: curves once, then the marker
        noising_plots.plot_histogram(result.x_t, result.x0, result.t).savefig(io.BytesIO(), format="png")

    cold_s, _ = _best_time(lambda: chain.x_at(T), 1)
    rng = np.random.default_rng(0)
    picture_s, plot_s = [], []
    for t in rng.integers(0, T + 1, size=args.moves):
        start = time.perf_counter()
        result = pictures(int(t))
        middle = time.perf_counter()
        plots(result)
        picture_s.append(middle - start)
        plot_s.append(time.perf_counter() - middle)
    total = np.add(picture_s, plot_s)
    print(f"noising: {x0.shape[1]}x{x0.shape[0]} image, T = {T}, {args.moves} random slider moves")
    print(f"{'step':<40}{'median s':>10}{'worst s':>10}")
    print(f"{'first query of a new chain (t = T)':<40}{cold_s:>10.3f}{cold_s:>10.3f}")
    for name, values in (("pictures + summary (warm chain)", picture_s), ("two plots to PNG", plot_s),
                         ("whole slider move", total)):
        print(f"{name:<40}{np.median(values):>10.3f}{np.max(values):>10.3f}")
    print(f"whole move vs a 1 s budget: median {np.median(total):.2f}x, worst {np.max(total):.2f}x")
    return 0


def _add_noising(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "noising", help="cost of one move of the forward-noising slider",
        description="Lesson 2: time the slider's picture path and plots on a 256x256 image.")
    parser.add_argument("--moves", type=_positive_int, default=30,
                        help="random slider positions to time (default 30)")
    parser.set_defaults(func=run_noising)


def _bare_sampling_loop(unet, scheduler_config, request, device):
    """The plain diffusers loop (as in ``DDIMPipeline.__call__``) with the sampler's CFG batching."""
    import torch

    from diffusion.lessons.sampling import sampler as sampling

    scheduler = sampling.SAMPLERS[request.sampler].from_config(scheduler_config)
    scheduler.set_timesteps(request.num_inference_steps, device=device)
    size = unet.config.sample_size
    generator = torch.Generator().manual_seed(request.seed)
    x = torch.randn((request.batch_size, unet.config.in_channels, size, size), generator=generator)
    x = (x * scheduler.init_noise_sigma).to(device)
    labels = sampling.class_labels(request).to(device)
    null = torch.full_like(labels, sampling.NULL_CLASS)
    w = request.guidance_scale
    extra = {"eta": request.eta, "use_clipped_model_output": True} if request.sampler == "ddim" else {}
    with torch.inference_mode():
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(x, t)
            if w == 1.0:
                eps = unet(x_in, t, class_labels=labels).sample
            elif w == 0.0:
                eps = unet(x_in, t, class_labels=null).sample
            else:
                eps_cond, eps_uncond = unet(torch.cat([x_in, x_in]), t,
                                            class_labels=torch.cat([labels, null])).sample.chunk(2)
                eps = eps_uncond + w * (eps_cond - eps_uncond)
            x = scheduler.step(eps, t, x, generator=generator, **extra).prev_sample
    return x.float().cpu()


def _sampling_model(args: argparse.Namespace, device):
    """``(unet, scheduler_config, description)`` for ``--model-dir``, ``--random-tiny`` or the shipped model."""
    from diffusers import DDPMScheduler, UNet2DModel

    from diffusion.models import registry as models

    if args.model_dir:
        unet, config = models.load_unet_folder(args.model_dir, device, name=args.model_dir)
        return unet, config, f"model folder {args.model_dir}"
    if args.random_tiny:
        import torch

        torch.manual_seed(0)
        unet = UNet2DModel(
            sample_size=28, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
            num_class_embeds=11, norm_num_groups=4).to(device).eval()
        return unet, DDPMScheduler().config, ("random tiny UNet (channels 8,16), untrained: this times the "
                                              "loop's overhead on a near-worst case, not real sampling")
    unet, config = models.load_unet_model("mnist", device)
    return unet, config, f"shipped model {models.MODELS['mnist'].path}"


def run_sampling(args: argparse.Namespace) -> int:
    """Time the recorded sampler loop against a bare diffusers loop, and DDIM against DDPM."""
    import torch

    from diffusion.lessons.sampling import sampler as sampling
    from diffusion.devices import describe_device, resolve_device
    from diffusion.errors import InputError

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
        loading = time.perf_counter()
        unet, config, described = _sampling_model(args, device)
        described += f", loaded in {time.perf_counter() - loading:.2f} s"
        big_t = int(config["num_train_timesteps"])
        ddim = sampling.SampleRequest(sampler="ddim", num_inference_steps=args.steps, seed=args.seed,
                                      batch_size=args.batch_size, digit="random",
                                      guidance_scale=args.guidance).validated(big_t)
        ddpm = replace(ddim, sampler="ddpm", num_inference_steps=args.ddpm_steps or big_t).validated(big_t)
    except (InputError, ValueError) as error:
        hint = ("" if args.model_dir or args.random_tiny
                else " Pass --model-dir DIR, or --random-tiny to time the loop alone.")
        print(f"error: {error}{hint}", file=sys.stderr)
        return 2
    batch = ddim.batch_size * (1 if ddim.guidance_scale in (0.0, 1.0) else 2)
    print(f"sampling: {described}")
    print(f"device: {describe_device(device)}; batch {ddim.batch_size} (network batch {batch} with "
          f"guidance {ddim.guidance_scale}), seed {ddim.seed}, T = {big_t}")

    def streaming_callback(info):
        # What the app's worker thread does every step: CPU copies of x_t, x̂_0 and ε̂ to stream.
        for tensor in (info.x_t, info.x0_pred, info.eps_pred):
            tensor.detach().float().cpu()

    def ours(request):
        return sampling.sample(unet, config, request, device=device, callback=streaming_callback).samples

    ours(replace(ddim, num_inference_steps=2))  # warm-up
    ours_times, bare_times = [], []
    for _ in range(args.repeat):  # alternate, so background load hits both alike
        seconds, ours_x = _best_time(lambda: ours(ddim), 1)
        ours_times.append(seconds)
        seconds, bare_x = _best_time(lambda: _bare_sampling_loop(unet, config, ddim, device), 1)
        bare_times.append(seconds)
    ours_s, bare_s = min(ours_times), min(bare_times)
    paired = float(np.median(np.divide(ours_times, bare_times)))
    difference = float((ours_x - bare_x).abs().max())
    print(f"(a) DDIM-{ddim.num_inference_steps}, best of {args.repeat}")
    print(f"{'loop':<52}{'seconds':>10}{'ms/step':>10}")
    for name, seconds in (("bare diffusers loop", bare_s),
                          ("sampling.sample (recording + streaming copies)", ours_s)):
        print(f"{name:<52}{seconds:>10.3f}{1000 * seconds / ddim.num_inference_steps:>10.2f}")
    ratio = ours_s / bare_s
    print(f"ours / bare = {ratio:.3f}x best to best, {paired:.3f}x median of adjacent pairs "
          f"(target <= 1.10x best to best: {'ok' if ratio <= 1.10 else 'over'}); "
          f"max |ours - bare| = {difference:.2e}")
    first: list[float] = []
    start = time.perf_counter()
    sampling.sample(unet, config, ddpm, device=device, stop=lambda: True,
                    callback=lambda info: first.append(time.perf_counter() - start))
    print(f"first step of a DDPM run reaches the callback after {1000 * first[0]:.0f} ms "
          f"(the app streams it as the first frame)")

    ddpm_s, _ = _best_time(lambda: ours(ddpm), args.ddpm_repeat)
    ddim_s = ours_s
    print(f"(b) recorded runs, DDPM best of {args.ddpm_repeat}")
    print(f"{'sampler':<52}{'seconds':>10}{'ms/step':>10}")
    for name, seconds, steps in ((f"DDIM-{ddim.num_inference_steps} (eta {ddim.eta})", ddim_s,
                                  ddim.num_inference_steps),
                                 (f"DDPM-{ddpm.num_inference_steps}", ddpm_s, ddpm.num_inference_steps)):
        print(f"{name:<52}{seconds:>10.3f}{1000 * seconds / steps:>10.2f}")
    print(f"DDPM-{ddpm.num_inference_steps} / DDIM-{ddim.num_inference_steps} = {ddpm_s / ddim_s:.1f}x")
    return 0 if difference <= 1e-6 else 1


def _add_sampling(subparsers: argparse._SubParsersAction) -> None:
    from diffusion.devices import DEVICE_CHOICES  # one list of device names for every CLI

    parser = subparsers.add_parser(
        "sampling", help="sampler loop overhead and DDIM vs DDPM wall time",
        description="Lesson 3: time sampling.sample against a bare diffusers loop, and DDIM against DDPM.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-dir", help="a diffusers folder (unet/ + scheduler/) instead of the shipped model")
    source.add_argument("--random-tiny", action="store_true",
                        help="an untrained tiny UNet: times the loop's overhead only")
    parser.add_argument("--steps", type=_positive_int, default=50, help="DDIM steps (default 50)")
    parser.add_argument("--ddpm-steps", type=_positive_int, default=0, help="DDPM steps (default: all T)")
    parser.add_argument("--repeat", type=_positive_int, default=5,
                        help="runs of each loop in (a); the best time is shown (default 5)")
    parser.add_argument("--ddpm-repeat", type=_positive_int, default=1, help="runs of DDPM in (b) (default 1)")
    parser.add_argument("--batch-size", type=_positive_int, default=16, help="images per run (default 16)")
    parser.add_argument("--guidance", type=float, default=1.5, help="guidance scale (default 1.5, as in the app)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="default auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.set_defaults(func=run_sampling)


def run_denoise(args: argparse.Namespace) -> int:
    """Time each method of lesson 4 on one photo, side by side, in one run."""
    import torch

    from diffusion import images
    from diffusion.lessons.denoising import classical
    from diffusion.models import registry as models
    from diffusion.lessons.denoising.denoiser import METHODS, add_noise, run_method

    if args.threads:
        torch.set_num_threads(args.threads)
    from skimage import data  # the 512x512 original of the bundled example

    pixels, _ = images.load_image(data.astronaut(), max_side=args.size)
    clean = np.clip(np.rint((pixels + 1) * 127.5), 0, 255).astype(np.uint8)
    noisy = add_noise(clean, 25.0, seed=0)
    start = time.perf_counter()
    denoiser = models.load_denoiser("cpu", args.model_dir)
    load_s = time.perf_counter() - start
    methods = [m for m in METHODS if m != "bm3d" or classical.bm3d_available()]
    rows = {}
    for method in methods:
        runs = [run_method(method, noisy, 25.0, clean=clean, denoiser=denoiser, steps=args.steps)
                for _ in range(args.repeat + (1 if method.startswith("diffusion") else 0))]
        cold = runs[0].seconds
        runs = runs[1:] if method.startswith("diffusion") else runs  # the first network call warms up
        best = min(runs, key=lambda r: r.seconds)
        rows[method] = (best.seconds, min(r.cpu_seconds for r in runs), best.psnr, cold)
    print(f"Lesson 4 on skimage's astronaut at {clean.shape[1]}x{clean.shape[0]}, sigma = 25, "
          f"torch threads {torch.get_num_threads()}; model load {load_s:.2f} s")
    ref = rows.get("bm3d")
    print(f"{'method':<22}{'wall s':>9}{'CPU s':>9}{'PSNR dB':>9}  {'BM3D CPU / this CPU':>20}")
    for method, (wall, cpu, psnr, cold) in rows.items():
        ratio = f"{ref[1] / cpu:.1f}x" if ref and cpu > 0 else "-"
        print(f"{method:<22}{wall:>9.3f}{cpu:>9.3f}{psnr:>9.2f}  {ratio:>20}")
    print(f"one click with every method: {sum(r[0] for r in rows.values()):.2f} s; "
          f"first one-step call (cold): {rows['diffusion_one_step'][3]:.2f} s")
    return 0


def _add_denoise(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "denoise", help="time of every lesson-4 method on one photo",
        description="Lesson 4: wall and CPU time of each denoiser on a colour photo, with ratios to BM3D.")
    parser.add_argument("--size", type=_positive_int, default=384, help="longest side (default 384, the tab's)")
    parser.add_argument("--steps", type=_positive_int, default=10, help="multi-step DDIM steps (default 10)")
    parser.add_argument("--repeat", type=_positive_int, default=3, help="runs per method, best shown (default 3)")
    parser.add_argument("--model-dir", help="a denoiser folder instead of the shipped one")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.set_defaults(func=run_denoise)


SUBCOMMANDS = (_add_heat, _add_noising, _add_sampling, _add_denoise)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one benchmark; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m diffusion.bench",
                                     description="Diffusion Lab benchmarks.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from diffusion.bench import load as bench_load  # lesson 5 and the classroom load test
    from diffusion.bench import text2image as bench_text2image

    for add in (*SUBCOMMANDS, bench_text2image.add_subcommand, bench_load.add_subcommand):
        add(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
