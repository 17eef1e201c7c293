"""``python -m diffusion.train text2image``: lesson 6's own tiny Stable Diffusion.

Usage::

    python -m diffusion.train text2image --out runs/text2image [--steps 6000] [--vae-steps 2500] \\
        [--export assets/models/tiny-shapes-sd]

Every part of a latent diffusion model (Rombach et al. 2022), as
:mod:`diffusion.models.tiny_sd` builds it, is trained here from scratch on
:mod:`diffusion.datasets.shapes` scenes, all regenerated from ``--seed``:

0. **Tokenizer.** A byte-pair encoding learned (with the ``tokenizers`` library) on
   the scene vocabulary, saved as a CLIP tokenizer: every known word is one token,
   an unknown word falls apart into letters.
1. **VAE** (``AutoencoderKL``): 64×64×3 pixels ↔ 8×8×8 latents, the same 8× shrink
   of the side as Stable Diffusion (with 8 latent channels instead of 4: an 8×8
   cell of a sharp-edged scene needs them). Loss: L1 reconstruction, weighted
   ``--shape-weight`` times more on the shape's pixels than on the background
   (the shape covers a few % of the picture, and it is what the captions talk
   about), plus a small KL term. Afterwards the latent scale factor is set to
   1 / std of the training latents (SD's 0.18215 was found the same way).
   The shipped model uses ``--vae-channels 16,32,64 --latent-channels 4``: 16×16×4
   latents, a 4× shrink, whose reconstructions keep small shapes (its model card
   has the measurements).
1b. **Decoder** (``--decoder-steps``): the decoder alone trains on, the encoder
   frozen, so the latent space stays as it was and small corners come back sharp.
2. **Text encoder + denoiser** (``CLIPTextModel`` + ``UNet2DConditionModel``),
   trained together on the DDPM loss (Ho et al. 2020, Algorithm 1) in latent space,
   by default in its v-prediction form (Salimans & Ho 2022; ``--prediction-type``)::

       z_0 ~ q(z | x),  t ~ U{0..T-1},  ε ~ N(0, I)
       z_t = √ᾱ_t z_0 + √(1-ᾱ_t) ε                      (DDPM eq. 4)
       v   = √ᾱ_t ε - √(1-ᾱ_t) z_0
       L = ‖v - v_θ(z_t, t, E(c))‖²     (epsilon: L = ‖ε - ε_θ(z_t, t, E(c))‖², DDPM eq. 14)

   Captions drop their size, position and background words at random (so short
   prompts mean "anything"), 10 % become empty (the unconditional model that
   classifier-free guidance needs, Ho & Salimans 2022), and some get a random
   made-up word inserted, so words the model does not know are ignored.

The export is a standard ``StableDiffusionPipeline`` folder (model_index.json,
vae/, text_encoder/, tokenizer/, unet/, scheduler/; safetensors), loadable with
``StableDiffusionPipeline.from_pretrained(folder)``. Scenes with the held-out
pairings of :mod:`diffusion.datasets.shapes` are never drawn, in either stage.
"""

from __future__ import annotations

import argparse
import copy
import json
import string
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline
from diffusers.optimization import get_cosine_schedule_with_warmup
from tqdm import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from diffusion import cli
from diffusion.datasets import shapes
from diffusion.errors import InputError
from diffusion.models.tiny_sd import MAX_TOKENS, build_text_encoder, build_tokenizer, build_unet, build_vae
from diffusion.train import loop

# Noise schedules by name. Stable Diffusion's "scaled_linear" keeps sqrt(ᾱ_T) = 0.068 of the
# picture at t = T: in training a model can read the layout from that leftover signal, but
# sampling starts from pure noise, where it is not there (Lin et al. 2024 describe this at
# full scale). DDPM's "linear" leaves 0.0064.
SCHEDULES = {"linear": {"beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"},
             "scaled_linear": {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}}
RUN_KEYS = ("channels", "text_width", "text_layers", "vae_channels", "latent_channels", "vae_steps",
            "vae_batch_size", "kl_weight", "shape_weight", "scenes", "batch_size", "lr", "warmup", "seed", "caption_drop", "empty_caption",
            "junk_word", "ema_decay", "weight_decay", "grad_clip")


def training_caption(scene: shapes.Scene, rng: np.random.Generator, args: argparse.Namespace) -> str:
    """The caption one training step uses: words dropped, sometimes empty, sometimes with a made-up word."""
    if rng.random() < args.empty_caption:
        return ""
    words = shapes.caption(scene, rng, args.caption_drop).split()
    if rng.random() < args.junk_word:
        junk = "".join(rng.choice(list(string.ascii_lowercase), size=int(rng.integers(2, 9))))
        words.insert(int(rng.integers(0, len(words) + 1)), junk)
    return " ".join(words)


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 → ``(N, 3, H, W)`` float on [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def shape_mask(images: np.ndarray, scenes: list[shapes.Scene]) -> torch.Tensor:
    """``(N, 1, H, W)``: 1 where a pixel differs from its scene's background colour (the shape and its edge)."""
    background = np.array([shapes.COLOURS[scene.background] for scene in scenes], dtype=np.int16)
    differs = np.abs(images.astype(np.int16) - background[:, None, None, :]).max(axis=-1) > 8
    return torch.from_numpy(differs[:, None].astype(np.float32))


def scene_batch(args: argparse.Namespace, stream: int, step: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh scenes for one autoencoder step: pixels and per-pixel loss weights (``--shape-weight`` on the shape)."""
    rng = np.random.default_rng(np.random.SeedSequence([args.seed, stream, step]))
    scenes = [shapes.random_scene(rng) for _ in range(args.vae_batch_size)]
    images = np.stack([shapes.render(scene) for scene in scenes])
    weight = 1.0 + (args.shape_weight - 1.0) * shape_mask(images, scenes)
    return to_pixels(images).to(device), weight.to(device)


def sample_latent(posterior: Any, generator: torch.Generator) -> torch.Tensor:
    """z = μ + σ ε, with ε drawn on the CPU from ``generator`` (the same on every device)."""
    return posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(
        posterior.mean.device)


def weighted_l1(reconstruction: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error with per-pixel ``weight`` (``(N, 1, H, W)``, default all ones), divided by the total weight."""
    if weight is None:
        weight = torch.ones_like(x[:, :1])
    weight = weight.expand_as(x)
    return (weight * (reconstruction - x).abs()).sum() / weight.sum()


def vae_loss(vae: AutoencoderKL, x: torch.Tensor, kl_weight: float, generator: torch.Generator,
             weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted L1 reconstruction of a sampled latent + ``kl_weight`` × KL(q(z|x) ‖ N(0, I)) per latent value.

    ``weight``: see :func:`weighted_l1`; the loss stays an average absolute error.
    """
    posterior = vae.encode(x).latent_dist
    reconstruction = vae.decode(sample_latent(posterior, generator)).sample
    kl = 0.5 * (posterior.mean ** 2 + posterior.var - 1.0 - posterior.logvar).mean()
    return weighted_l1(reconstruction, x, weight) + kl_weight * kl


def encode_text(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, captions: list[str],
                device: torch.device) -> torch.Tensor:
    """Hidden states of the last layer, padded to :data:`MAX_TOKENS`, as the pipeline computes them."""
    ids = tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    return text_encoder(ids)[0]


def _stage_args(args: argparse.Namespace, **changes: Any) -> argparse.Namespace:
    stage = copy.copy(args)
    for key, value in changes.items():
        setattr(stage, key, value)
    return stage


class _KeepOnExport:
    """The ``export_to`` of an autoencoder stage: save the EMA model and hand it to the next stage.

    :func:`~diffusion.train.loop.run_loop` exports only when the stage finished, so
    ``model`` stays None when the run paused.
    """

    def __init__(self, ema: loop.EMA) -> None:
        self.ema, self.model = ema, None

    def __call__(self, out: Path) -> None:
        self.ema.model.save_pretrained(out, safe_serialization=True)
        self.model = self.ema.model


def train_vae(args: argparse.Namespace, run_dir: Path, device: torch.device, settings: dict[str, Any],
              base_info: dict[str, Any]) -> tuple[int, AutoencoderKL | None]:
    """Stage 1 in ``run_dir/vae``: the exit status and the EMA autoencoder (None if the run paused).

    The finished autoencoder is also saved to ``run_dir/vae/model``.
    """
    folder = run_dir / "vae"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    vae = build_vae(args.vae_channels, args.latent_channels).to(device)
    ema = loop.EMA(vae, args.ema_decay)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, min(args.warmup, args.vae_steps // 10), args.vae_steps)
    checkpoint = loop.find_checkpoint(folder) if args.resume else None

    def one_step(step: int) -> float:
        x, weight = scene_batch(args, 1, step, device)
        loss = vae_loss(vae, x, args.kl_weight, loop.step_generator(args.seed, step), weight)
        return loop.optimise(vae, ema, optimizer, lr_schedule, loss, step, args.grad_clip)

    keep = _KeepOnExport(ema)
    status = loop.run_loop(_stage_args(args, steps=args.vae_steps, export=str(folder / "model")), folder,
                            checkpoint, vae, ema, optimizer, lr_schedule, settings, dict(base_info, stage="vae"),
                            one_step, None, 0, keep)
    return status, keep.model


DECODER_KEYS = ("decoder_steps", "decoder_lr")  # stage 1b; the UNet stage does not depend on them
UNET_KEYS = ("head_dim", "beta_schedule", "prediction_type", "pooled_text")  # stage 2 only: the autoencoder does not depend on them


def train_decoder(args: argparse.Namespace, run_dir: Path, device: torch.device, settings: dict[str, Any],
                  base_info: dict[str, Any], vae: AutoencoderKL) -> tuple[int, AutoencoderKL | None]:
    """Stage 1b in ``run_dir/decoder``: sharpen the decoder with the encoder frozen.

    At 8× smaller latents the stage-1 decoder rounds off corners (a small star comes
    back as a blob). Freezing the encoder keeps the latent space, and so the UNet's
    training data, exactly as it was, while the decoder trains on for
    ``--decoder-steps`` more steps at ``--decoder-lr`` on the same weighted L1 loss.
    Returns the exit status and the refined EMA autoencoder (None if the run paused).
    """
    if args.decoder_steps == 0:
        return 0, vae
    folder = run_dir / "decoder"
    folder.mkdir(parents=True, exist_ok=True)
    refined = copy.deepcopy(vae).to(device).requires_grad_(False)
    trainable = [*refined.decoder.parameters(), *refined.post_quant_conv.parameters()]
    for parameter in trainable:
        parameter.requires_grad_(True)
    ema = loop.EMA(refined, args.ema_decay)
    optimizer = torch.optim.AdamW(trainable, lr=args.decoder_lr, weight_decay=args.weight_decay)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, min(100, args.decoder_steps // 10), args.decoder_steps)
    checkpoint = loop.find_checkpoint(folder) if args.resume else None

    def one_step(step: int) -> float:
        x, weight = scene_batch(args, 3, step, device)
        with torch.no_grad():  # the encoder is frozen
            z = sample_latent(refined.encode(x).latent_dist, loop.step_generator(args.seed + 3, step))
        loss = weighted_l1(refined.decode(z).sample, x, weight)
        return loop.optimise(refined, ema, optimizer, lr_schedule, loss, step, args.grad_clip)

    keep = _KeepOnExport(ema)
    stage_settings = dict(settings, **{key: getattr(args, key) for key in DECODER_KEYS})
    status = loop.run_loop(_stage_args(args, steps=args.decoder_steps, export=str(folder / "model")), folder,
                            checkpoint, refined, ema, optimizer, lr_schedule, stage_settings,
                            dict(base_info, stage="decoder", settings=stage_settings), one_step, None, 0, keep)
    return status, keep.model


@torch.no_grad()
def encode_scenes(vae: AutoencoderKL, images: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image's latent (unscaled), in batches."""
    means, stds = [], []
    for start in range(0, len(images), 256):
        posterior = vae.encode(to_pixels(images[start:start + 256]).to(device)).latent_dist
        means.append(posterior.mean.cpu())
        stds.append(posterior.std.cpu())
    return torch.cat(means), torch.cat(stds)


def run_text2image(args: argparse.Namespace) -> int:
    """Train (or resume) both stages and optionally export the pipeline; see the module docstring."""
    device, run_dir, settings, _ = loop.prepare_run(args, RUN_KEYS)
    if not args.resume and any(loop.find_checkpoint(run_dir / stage) for stage in ("vae", "decoder", "diffusion")):
        raise InputError("run_exists", "{path} already holds a checkpoint: add --resume or choose another --out.",
                         path=str(run_dir))
    tokenizer = build_tokenizer(run_dir / "tokenizer-files")
    base_info = {"task": "text2image", "seed": args.seed, "settings": settings,
                 "hardware": loop.hardware_info(device),
                 "data": {"kind": "procedural scenes (diffusion.datasets.shapes)", "image_size": shapes.IMAGE_SIZE,
                          "heldout_colour_shape": sorted(map(list, shapes.HELDOUT_COLOUR_SHAPE)),
                          "heldout_shape_position": sorted(map(list, shapes.HELDOUT_SHAPE_POSITION))}}
    status, vae = train_vae(args, run_dir, device, settings, base_info)
    if vae is None:
        return status
    vae.requires_grad_(False).eval()
    status, decoder_vae = train_decoder(args, run_dir, device, settings, base_info, vae)
    if decoder_vae is None:
        return status
    decoder_vae.requires_grad_(False).eval()

    images, scenes = shapes.dataset(args.scenes, args.seed, heldout=False)
    mean, std = encode_scenes(vae, images, device)
    scale = float(1.0 / mean.std())
    decoder_vae.register_to_config(scaling_factor=scale)  # the same encoder as ``vae``, so the same latents
    tqdm.write(f"latents: {tuple(mean.shape[1:])}, scaling factor {scale:.4f}")

    torch.manual_seed(args.seed + 1)
    text_encoder = build_text_encoder(tokenizer, args.text_width, args.text_layers)
    unet = build_unet(args.channels, args.text_width, mean.shape[-1], args.latent_channels, args.head_dim,
                      args.pooled_text)
    model = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder}).to(device)
    ema = loop.EMA(model, args.ema_decay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, args.warmup, args.steps)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=args.prediction_type,
                                    **SCHEDULES[args.beta_schedule])
    folder = run_dir / "diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = loop.find_checkpoint(folder) if args.resume else None
    counts = {name: sum(p.numel() for p in part.parameters())
              for name, part in (("unet", unet), ("text_encoder", text_encoder), ("vae", decoder_vae))}
    info = dict(base_info, stage="diffusion", parameters=counts, latent_scaling_factor=scale,
                weights_mb_fp32=round(sum(counts.values()) * 4 / 1e6, 2),
                vae_config=dict(decoder_vae.config), unet_config=dict(unet.config),
                text_encoder_config=text_encoder.config.to_dict(), scheduler_config=dict(noise_scheduler.config))

    def one_step(step: int) -> float:
        generator = loop.step_generator(args.seed, step)
        rng = np.random.default_rng(np.random.SeedSequence([args.seed, 2, step]))
        index = torch.from_numpy(rng.integers(0, len(scenes), size=args.batch_size))
        z0 = (mean[index] + std[index] * torch.randn(std[index].shape, generator=generator)) * scale
        captions = [training_caption(scenes[i], rng, args) for i in index.tolist()]
        z0 = z0.to(device)
        noise = torch.randn(z0.shape, generator=generator).to(device)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(z0),), generator=generator).to(device)
        hidden = encode_text(tokenizer, model["text_encoder"], captions, device)
        prediction = model["unet"](noise_scheduler.add_noise(z0, noise, t), t, encoder_hidden_states=hidden).sample
        target = noise if args.prediction_type == "epsilon" else noise_scheduler.get_velocity(z0, noise, t)
        return loop.optimise(model, ema, optimizer, lr_schedule, F.mse_loss(prediction, target), step, args.grad_clip)

    def export(out: Path) -> None:
        pipe = StableDiffusionPipeline(
            vae=decoder_vae, text_encoder=ema.model["text_encoder"], tokenizer=tokenizer, unet=ema.model["unet"],
            scheduler=DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False,
                                    timestep_spacing="trailing", prediction_type=args.prediction_type,
                                    **SCHEDULES[args.beta_schedule]),
            safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False)
        pipe.save_pretrained(out, safe_serialization=True)
        stages = {name: json.loads((run_dir / name / "train_info.json").read_text())
                  for name in ("vae", "decoder", "diffusion") if (run_dir / name / "train_info.json").exists()}
        (out / "train_info.json").write_text(json.dumps(stages, indent=1))

    stage_settings = dict(settings, **{key: getattr(args, key) for key in UNET_KEYS})
    info["settings"] = stage_settings
    return loop.run_loop(args, folder, checkpoint, model, ema, optimizer, lr_schedule, stage_settings, info,
                          one_step, None, 0, export)


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register ``text2image`` with the ``python -m diffusion.train`` parser."""
    parser = subparsers.add_parser(
        "text2image", help="tiny Stable Diffusion on captioned shapes (lesson 6)",
        description="Train a tokenizer, VAE, text encoder and latent UNet from scratch on generated scenes.")
    loop.add_run_options(parser)
    parser.set_defaults(steps=6000, batch_size=64, lr=1e-3, warmup=200, checkpoint_every=250, func=run_text2image)
    parser.add_argument("--channels", type=cli.channels, default=(32, 64, 64),
                        help="UNet widths (default 32,64,64)")
    parser.add_argument("--head-dim", type=cli.positive_int, default=32,
                        help="UNet attention head width (default 32)")
    parser.add_argument("--beta-schedule", choices=sorted(SCHEDULES), default="linear",
                        help="noise schedule of the UNet stage (default linear, DDPM's; scaled_linear is SD's)")
    parser.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default="v_prediction",
                        help="what the UNet predicts (default v_prediction: its loss weighs the very noisy steps, "
                             "where the layout is decided, as much as the rest; epsilon nearly ignores them)")
    parser.add_argument("--no-pooled-text", dest="pooled_text", action="store_false",
                        help="condition the UNet through cross-attention only (default: also a pooled caption "
                             "embedding added to the timestep embedding)")
    parser.add_argument("--text-width", type=cli.positive_int, default=64, help="text encoder width (default 64)")
    parser.add_argument("--text-layers", type=cli.positive_int, default=3, help="text encoder layers (default 3)")
    parser.add_argument("--vae-channels", type=cli.channels, default=(16, 32, 64, 64),
                        help="VAE widths; 4 entries = 8× smaller latents (default 16,32,64,64)")
    parser.add_argument("--latent-channels", type=cli.positive_int, default=8, help="latent channels (default 8)")
    parser.add_argument("--vae-steps", type=cli.positive_int, default=4000, help="VAE steps (default 4000)")
    parser.add_argument("--vae-batch-size", type=cli.positive_int, default=16, help="default 16")
    parser.add_argument("--kl-weight", type=float, default=1e-4, help="VAE KL weight (default 1e-4)")
    parser.add_argument("--decoder-steps", type=cli.non_negative_int, default=3000,
                        help="decoder-only steps after the VAE, encoder frozen (default 3000; 0 = none)")
    parser.add_argument("--decoder-lr", type=float, default=3e-4, help="decoder stage learning rate (default 3e-4)")
    parser.add_argument("--shape-weight", type=float, default=10.0,
                        help="VAE loss weight of the shape's pixels against the background's (default 10)")
    parser.add_argument("--scenes", type=cli.positive_int, default=20000,
                        help="training scenes drawn from the seed (default 20000)")
    parser.add_argument("--caption-drop", type=cli.probability, default=0.3,
                        help="chance of leaving out each of size, position, background (default 0.3)")
    parser.add_argument("--empty-caption", type=cli.probability, default=0.1,
                        help="chance of an empty caption, for classifier-free guidance (default 0.1)")
    parser.add_argument("--junk-word", type=cli.probability, default=0.15,
                        help="chance of inserting a made-up word (default 0.15)")
