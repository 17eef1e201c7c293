"""Stable Diffusion 1.5 at its real size, with random weights: the published configurations as data.

Stable Diffusion is a latent diffusion model (Rombach et al. 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models", CVPR; sec. 3 and appendix E): a KL-regularised
autoencoder with downsampling factor f = 8 and 4 latent channels, a UNet ε_θ(z_t, t, c) with
cross-attention to the text (sec. 3.3), and a frozen CLIP ViT-L/14 text encoder (Radford et
al. 2021). The values below are copied from the configuration files of the published
checkpoint, ``stable-diffusion-v1-5/stable-diffusion-v1-5`` on the Hugging Face hub (formerly
``runwayml/stable-diffusion-v1-5``):

* ``unet/config.json`` (:data:`UNET_CONFIG`): 859,520,964 parameters;
* ``vae/config.json`` (:data:`VAE_CONFIG`): 83,653,863 parameters; the latent scale
  0.18215 is ``scale_factor`` of the LDM repository's ``configs/stable-diffusion/v1-inference.yaml``
  (diffusers' ``AutoencoderKL`` default), which makes the latents of the training images
  unit-variance (LDM sec. 4.3.2);
* ``text_encoder/config.json`` (:data:`TEXT_ENCODER_CONFIG`): the text tower of
  ``openai/clip-vit-large-patch14``, 123,060,480 parameters;
* ``scheduler/scheduler_config.json`` (:data:`SCHEDULER_CONFIG`): PNDM (Liu et al. 2022)
  over the "scaled linear" β schedule of LDM, √β from √0.00085 to √0.012 over T = 1000;
* ``safety_checker/config.json`` (:data:`SAFETY_CHECKER_CONFIG`, the content filter released
  with SD, also ``CompVis/stable-diffusion-safety-checker``): CLIP ViT-L/14's image tower and
  projection, 303,981,588 parameters, and ``feature_extractor/preprocessor_config.json``
  (:data:`FEATURE_EXTRACTOR_CONFIG`): CLIP's 224² bicubic crop with OpenAI's mean and std.

Weights cannot be downloaded here, so :func:`build_sd15` fills every parameter from one
seeded ``torch.Generator``. Neither can the CLIP vocabulary (49,408 byte-pair tokens): the
tokenizer is lesson 6's own (:func:`diffusion.models.tiny_sd.build_tokenizer`, 147 tokens
learnt on the shapes captions) with CLIP's context length of 77, and the text encoder
keeps the real vocabulary size, so the tokenizer's ids are a subset of its embedding rows.
The text encoder's special-token ids are the tokenizer's own instead of the published
``bos 0 / eos 2 / pad 1`` (placeholders there as well: CLIP's real ids are 49406/49407).

Such a pipeline has SD 1.5's every shape and byte of memory but paints noise; it exists to run
lesson 6's code path at real size (``python -m diffusion.bench text2image --sd15-cpu``).
"""

from __future__ import annotations

import copy
import gc
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

from diffusion.errors import InputError, check_range
from diffusion.models.registry import PIPELINE_FILES, missing_file

TOKENIZER_MAX_LENGTH = 77  # CLIP's context length (``max_position_embeddings`` below)

UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}

SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,  # not PNDM's own option: kept in its config for a swap to DDIM
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

SAFETY_CHECKER_CONFIG: dict[str, Any] = {  # a CLIPConfig: only the vision tower and the projection are used
    "projection_dim": 768,
    "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                    "num_hidden_layers": 12},
    "vision_config": {"hidden_size": 1024, "image_size": 224, "intermediate_size": 4096, "num_attention_heads": 16,
                      "num_hidden_layers": 24, "patch_size": 14},
}

FEATURE_EXTRACTOR_CONFIG: dict[str, Any] = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,  # bicubic
    "size": {"shortest_edge": 224},
}

CHECKER_FILES = ("safety_checker/config.json", "safety_checker/model.safetensors",
                 "feature_extractor/preprocessor_config.json")
PARAMETERS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480,  # of the configs above
              "safety_checker": 303_981_588}


def _seed(seed: Any) -> int:
    return int(check_range("seed", seed, 0, 2**63 - 1, integer=True))


def _dtype(dtype: Any) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InputError("bad_dtype", "dtype must be a floating-point torch dtype (got {value}).",
                         value=str(dtype)[:40])
    return dtype


@torch.no_grad()
def fill_random_(model: torch.nn.Module, generator: torch.Generator,
                 dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Give every parameter of ``model`` (built on the meta device) seeded values, in place.

    Matrices and kernels get PyTorch's default ``Linear``/``Conv`` initialisation,
    U(-1/√fan_in, 1/√fan_in) (kaiming-uniform with a = √5, He et al. 2015), embeddings
    included (a vector one, CLIP's class embedding, U(-1/√n, 1/√n)); biases are zero and
    normalisation scales one, so activations keep their scale through the depth of the
    network as in an untrained model. Values are drawn in
    float32, module by module in a fixed order, then cast: the same seed gives the same
    weights in every dtype.

    Args:
        model: A module whose parameters may be on the meta device (buffers must be real).
        generator: The CPU generator every value comes from.
        dtype: The parameters' dtype afterwards.

    Returns:
        ``model``, its parameters on the CPU without gradients.
    """
    done: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        for name, parameter in list(module._parameters.items()):
            if parameter is None:
                continue
            if id(parameter) in done:  # a tied weight stays tied
                module._parameters[name] = done[id(parameter)]
                continue
            values = torch.empty(parameter.shape, dtype=torch.float32)
            if values.dim() >= 2 or not name.endswith(("weight", "bias")):  # matrices, kernels, embeddings
                bound = (values[0].numel() if values.dim() >= 2 else values.numel()) ** -0.5
                values.uniform_(-bound, bound, generator=generator)
            elif name.endswith("weight"):  # normalisation scales
                values.fill_(1.0)
            else:
                values.zero_()
            filled = torch.nn.Parameter(values.to(dtype), requires_grad=False)
            module._parameters[name] = done[id(parameter)] = filled
    return model


def build_tokenizer_77(folder: Path) -> Any:
    """Lesson 6's CLIP tokenizer (:func:`~diffusion.models.tiny_sd.build_tokenizer`) written to
    ``folder``, with CLIP's context length of :data:`TOKENIZER_MAX_LENGTH` tokens."""
    from diffusion.models.tiny_sd import build_tokenizer  # trains a small BPE: only when needed

    tokenizer = build_tokenizer(Path(folder))
    tokenizer.model_max_length = TOKENIZER_MAX_LENGTH
    if len(tokenizer) > TEXT_ENCODER_CONFIG["vocab_size"]:
        raise RuntimeError("the tokenizer has more tokens than SD 1.5's text encoder has embeddings")
    return tokenizer


def build_sd15(seed: int = 0, dtype: torch.dtype = torch.float32, *,
               safety_checker: bool = False) -> StableDiffusionPipeline:
    """SD 1.5's pipeline from its published configurations, with seeded random weights.

    The networks are built on the meta device (no memory, no default initialisation) and
    then filled by :func:`fill_random_` from one generator: UNet, VAE, text encoder, then
    the content filter. About 1.07 B parameters without the filter (4.3 GB in float32),
    1.37 B with it.

    Args:
        seed: Seeds the weights (0 .. 2⁶³-1).
        dtype: The weights' floating-point dtype (float16 for a GPU).
        safety_checker: Also SD 1.5's content filter, a ``StableDiffusionSafetyChecker``
            (CLIP ViT-L/14 image tower, :data:`SAFETY_CHECKER_CONFIG`) with its feature
            extractor (:data:`FEATURE_EXTRACTOR_CONFIG`), as the published folder has. Its
            concept thresholds are the class's initial 1.0 (the published ones live in the
            released weights): cosine similarities never exceed them, so it flags nothing.

    Returns:
        A ``StableDiffusionPipeline`` on the CPU with SD 1.5's PNDM scheduler and lesson 6's
        tokenizer (see the module docstring).

    Raises:
        InputError: ``seed`` out of range or ``dtype`` not a floating-point dtype.
    """
    seed, dtype = _seed(seed), _dtype(dtype)
    with tempfile.TemporaryDirectory() as folder:  # the tokenizer reads its files once, when made
        tokenizer = build_tokenizer_77(Path(folder))
    text_config = dict(TEXT_ENCODER_CONFIG, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with init_empty_weights(include_buffers=False):  # buffers (CLIP's position ids) stay real
        unet = UNet2DConditionModel(**copy.deepcopy(UNET_CONFIG))
        vae = AutoencoderKL(**copy.deepcopy(VAE_CONFIG))
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
        checker = StableDiffusionSafetyChecker(CLIPConfig(**copy.deepcopy(SAFETY_CHECKER_CONFIG))) \
            if safety_checker else None
    generator = torch.Generator("cpu").manual_seed(seed)
    for network in (unet, vae, text_encoder, checker):
        if network is not None:
            fill_random_(network, generator, dtype).eval()
    if checker is not None:
        with torch.no_grad():
            checker.concept_embeds_weights.fill_(1.0)
            checker.special_care_embeds_weights.fill_(1.0)
    scheduler = PNDMScheduler.from_config(dict(SCHEDULER_CONFIG))
    features = CLIPImageProcessor(**copy.deepcopy(FEATURE_EXTRACTOR_CONFIG)) if safety_checker else None
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=checker, feature_extractor=features,
                                   image_encoder=None, requires_safety_checker=safety_checker)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_sd15_folder(path: str | Path, seed: int = 0, *, safety_checker: bool = True,
                     timings: dict[str, float] | None = None) -> Path:
    """Write :func:`build_sd15` ``(seed)`` as a standard diffusers folder, safetensors only.

    The folder has the published one's layout, content filter included (so lesson 6's filter,
    :func:`~diffusion.models.pipelines.load_content_checker`, finds the model's own offline),
    and loads with ``AutoPipelineForText2Image.from_pretrained(path, use_safetensors=True)``
    (lesson 6's :func:`~diffusion.models.pipelines.load_pipeline`). The built pipeline is freed
    before returning; about 5.5 GB are written (4.3 GB without the filter).

    Args:
        path: A folder that does not exist yet or is empty.
        seed: Seeds the weights.
        safety_checker: Include the content filter (see :func:`build_sd15`).
        timings: When given, receives ``build_s`` and ``save_s`` (wall seconds).

    Returns:
        The folder.

    Raises:
        InputError: ``folder_not_empty`` when ``path`` holds files (nothing is overwritten),
            ``not_a_folder`` when it is a file; see :func:`build_sd15` for ``seed``.
    """
    if not isinstance(path, (str, Path)) or not str(path).strip():
        raise InputError("not_a_folder", "path must name a folder.")
    folder, seed = Path(path), _seed(seed)
    if folder.exists() and not folder.is_dir():
        raise InputError("not_a_folder", "{path} is a file, not a folder.", path=str(folder))
    if folder.is_dir() and any(folder.iterdir()):
        raise InputError("folder_not_empty", "{path} is not empty; choose a new or empty folder.", path=str(folder))
    start = time.perf_counter()
    pipe = build_sd15(seed, safety_checker=bool(safety_checker))
    built = time.perf_counter()
    try:
        pipe.save_pretrained(folder, safe_serialization=True)
    finally:
        del pipe
        gc.collect()
    if timings is not None:
        timings.update(build_s=built - start, save_s=time.perf_counter() - built)
    return folder


def is_sd15_folder(path: str | Path, safety_checker: bool = True) -> bool:
    """Whether ``path`` is a complete pipeline folder with SD 1.5's UNet, VAE and text encoder shapes
    (and, with ``safety_checker``, a content filter in safetensors)."""
    if not isinstance(path, (str, Path)) or not str(path).strip():
        return False
    folder = Path(path)
    if not folder.is_dir() or missing_file(folder, PIPELINE_FILES) is not None:
        return False
    if safety_checker and missing_file(folder, CHECKER_FILES) is not None:
        return False
    try:
        unet = UNet2DConditionModel.load_config(folder, subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.load_config(folder, subfolder="vae", local_files_only=True)
        text = CLIPTextConfig.from_pretrained(folder / "text_encoder", use_safetensors=True, local_files_only=True)
    except (OSError, ValueError):
        return False
    unet_keys = ("block_out_channels", "layers_per_block", "cross_attention_dim", "in_channels", "sample_size")
    text_keys = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "max_position_embeddings")
    return (all(_same(unet.get(k), UNET_CONFIG[k]) for k in unet_keys)
            and all(_same(vae.get(k), VAE_CONFIG[k]) for k in ("block_out_channels", "latent_channels"))
            and all(getattr(text, k) == TEXT_ENCODER_CONFIG[k] for k in text_keys))


def _same(found: Any, published: Any) -> bool:
    return list(found) == published if isinstance(published, list) and isinstance(found, (list, tuple)) \
        else found == published
