"""``python -m diffusion.bench sampling``: lesson 4's sampler loop against a bare diffusers loop.

On the shipped digit model (or ``--model-dir``, or a random tiny UNet with
``--random-tiny``, which times only the loop's overhead), in one run:

(a) ``sampling.sample`` with recording and a no-op callback against a bare diffusers
    loop with the same scheduler, seed and guidance batching (best of ``--repeat``,
    alternating, with their largest pixel difference; exit status 1 if they disagree);
(b) DDIM with ``--steps`` steps against DDPM with all T steps.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import numpy as np

from diffusion import cli
from diffusion.bench.timing import best_time


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

    cli.use_threads(args.threads)
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
        seconds, ours_x = best_time(lambda: ours(ddim), 1)
        ours_times.append(seconds)
        seconds, bare_x = best_time(lambda: _bare_sampling_loop(unet, config, ddim, device), 1)
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

    ddpm_s, _ = best_time(lambda: ours(ddpm), args.ddpm_repeat)
    ddim_s = ours_s
    print(f"(b) recorded runs, DDPM best of {args.ddpm_repeat}")
    print(f"{'sampler':<52}{'seconds':>10}{'ms/step':>10}")
    for name, seconds, steps in ((f"DDIM-{ddim.num_inference_steps} (eta {ddim.eta})", ddim_s,
                                  ddim.num_inference_steps),
                                 (f"DDPM-{ddpm.num_inference_steps}", ddpm_s, ddpm.num_inference_steps)):
        print(f"{name:<52}{seconds:>10.3f}{1000 * seconds / steps:>10.2f}")
    print(f"DDPM-{ddpm.num_inference_steps} / DDIM-{ddim.num_inference_steps} = {ddpm_s / ddim_s:.1f}x")
    return 0 if difference <= 1e-6 else 1


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register ``sampling`` with ``python -m diffusion.bench``."""
    parser = subparsers.add_parser(
        "sampling", help="sampler loop overhead and DDIM vs DDPM wall time",
        description="Lesson 4: time sampling.sample against a bare diffusers loop, and DDIM against DDPM.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-dir", help="a diffusers folder (unet/ + scheduler/) instead of the shipped model")
    source.add_argument("--random-tiny", action="store_true",
                        help="an untrained tiny UNet: times the loop's overhead only")
    parser.add_argument("--steps", type=cli.positive_int, default=50, help="DDIM steps (default 50)")
    parser.add_argument("--ddpm-steps", type=cli.positive_int, default=0, help="DDPM steps (default: all T)")
    parser.add_argument("--repeat", type=cli.positive_int, default=5,
                        help="runs of each loop in (a); the best time is shown (default 5)")
    parser.add_argument("--ddpm-repeat", type=cli.positive_int, default=1, help="runs of DDPM in (b) (default 1)")
    parser.add_argument("--batch-size", type=cli.positive_int, default=16, help="images per run (default 16)")
    parser.add_argument("--guidance", type=float, default=1.5, help="guidance scale (default 1.5, as in the app)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    cli.add_device_argument(parser)
    cli.add_threads_argument(parser)
    parser.set_defaults(func=run_sampling)
