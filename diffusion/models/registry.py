"""Registry of the models that ship with the app, loaded lazily and cached.

Each model is a diffusers folder under ``assets/models/<name>/`` as written by
``python -m diffusion.train mnist|denoiser --export DIR``::

    unet/config.json, unet/diffusion_pytorch_model.safetensors
    scheduler/scheduler_config.json
    train_info.json (the model card's numbers), README.md (the model card)
    denoiser.json (lesson 4's denoiser only: its noise range)

Loading uses safetensors only and never touches the network. A folder that is
missing or does not load raises :class:`ModelUnavailable`, so the user
interface can disable the one lesson that needs it while the rest keeps working.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffusion.datasets.digits import IMAGE_SIZE, NUM_CLASSES
from diffusion.lessons.denoising.denoiser import DiffusionDenoiser
from diffusion.errors import InputError

MODELS_DIR = Path(__file__).resolve().parents[2] / "assets" / "models"


@dataclass(frozen=True)
class ModelSpec:
    """One shipped model: where its folder is and what the lessons expect of it."""

    path: Path
    kind: str  # "unet2d": a class-conditional UNet2DModel + a DDPM scheduler
    title: str
    image_size: int
    in_channels: int
    num_class_embeds: int


MODELS: dict[str, ModelSpec] = {
    "mnist": ModelSpec(path=MODELS_DIR / "mnist-ddpm", kind="unet2d",
                       title="Class-conditional DDPM on MNIST digits", image_size=IMAGE_SIZE,
                       in_channels=1, num_class_embeds=NUM_CLASSES + 1),
}
DENOISER = "denoiser"
DENOISER_PATH = MODELS_DIR / "photo-denoiser"  # lesson 4, see diffusion.lessons.denoising.denoiser
REQUIRED_FILES = ("unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                  "scheduler/scheduler_config.json")


class ModelUnavailable(InputError):
    """A registered model cannot be used: its folder is missing, incomplete or corrupt."""

    def __init__(self, name: str, path: Path, reason: str) -> None:
        super().__init__("model_unavailable", "The model {name} is not available at {path}: {reason}.",
                         name=name, path=str(path), reason=reason)


_cache: dict[tuple[str, str, str], Any] = {}
_failed: dict[tuple[str, str], str] = {}
_lock = threading.Lock()


def _spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise InputError("bad_choice", "model must be one of: {choices} (got {value}).",
                         choices=", ".join(MODELS), value=str(name)[:40])
    return MODELS[name]


def _missing_file(path: Path) -> str | None:
    for relative in REQUIRED_FILES:
        if not (path / relative).is_file():
            return f"{relative} is missing"
    return None


def available(name: str) -> bool:
    """Whether ``name`` is registered, has all its files and has not failed to load. Loads nothing."""
    if name not in MODELS:
        return False
    spec = MODELS[name]
    return _missing_file(spec.path) is None and (name, str(spec.path)) not in _failed


def load_unet_folder(path: str | Path, device: torch.device | str = "cpu", *,
                     name: str = "model", spec: ModelSpec | None = None) -> tuple[UNet2DModel, Any]:
    """Load ``unet/`` and ``scheduler/`` of a diffusers folder (not cached).

    Args:
        path: The folder.
        device: Where the model goes; it is put in eval mode without gradients.
        name: Name used in error messages.
        spec: When given, the model's config must match its size, channels and classes.

    Returns:
        ``(unet, scheduler_config)``; the config is a DDPM scheduler's (β schedule, T).

    Raises:
        ModelUnavailable: The folder is missing, incomplete, unreadable or does not match ``spec``.
    """
    path = Path(path)
    missing = _missing_file(path)
    if missing:
        raise ModelUnavailable(name, path, missing)
    try:
        unet = UNet2DModel.from_pretrained(path, subfolder="unet", use_safetensors=True,
                                           local_files_only=True)
        scheduler_config = DDPMScheduler.from_config(
            DDPMScheduler.load_config(path, subfolder="scheduler", local_files_only=True)).config
    except Exception as error:  # JSON, safetensors and shape errors all mean "corrupt folder"
        raise ModelUnavailable(name, path, f"it could not be loaded ({type(error).__name__})") from error
    if spec is not None:
        expected = {"sample_size": spec.image_size, "in_channels": spec.in_channels,
                    "num_class_embeds": spec.num_class_embeds}
        wrong = {k: unet.config.get(k) for k, v in expected.items() if unet.config.get(k) != v}
        if wrong:
            raise ModelUnavailable(name, path, f"its configuration does not fit this lesson ({wrong})")
    return unet.to(torch.device(device)).eval().requires_grad_(False), scheduler_config


def load_unet_model(name: str, device: torch.device | str = "cpu") -> tuple[UNet2DModel, Any]:
    """The registered model ``name`` on ``device``, loaded once and then shared.

    Args:
        name: A key of :data:`MODELS`.
        device: Where the model runs; each device gets its own cached copy.

    Returns:
        ``(unet, scheduler_config)``. Treat the model as read-only: callers share it.

    Raises:
        ModelUnavailable: The folder is missing or corrupt (remembered, see :func:`available`).
        InputError: ``bad_choice`` for an unknown name.
    """
    spec = _spec(name)
    device = torch.device(device)
    return _load_once(name, spec.path, device, lambda: load_unet_folder(spec.path, device, name=name, spec=spec))


def _load_once(name: str, path: Path, device: torch.device, load: Any) -> Any:
    """``load()`` once per (name, folder, device), cached; a :class:`ModelUnavailable` is remembered."""
    key = (name, str(path), str(device))
    with _lock:  # one load at a time: a second caller waits and then finds it cached
        if key not in _cache:
            try:
                _cache[key] = load()
            except ModelUnavailable as error:
                _failed[(name, str(path))] = str(error)
                raise
            _failed.pop((name, str(path)), None)
        return _cache[key]


def clear_cache() -> None:
    """Forget loaded models and remembered failures (after replacing a model folder)."""
    with _lock:
        _cache.clear()
        _hub.clear()
        _failed.clear()


def _missing_denoiser_file(path: Path) -> str | None:
    return _missing_file(path) or (None if (path / "denoiser.json").is_file() else "denoiser.json is missing")


def denoiser_available(path: Path | None = None) -> bool:
    """Whether lesson 4's denoiser folder is complete and has not failed to load. Loads nothing."""
    path = Path(path or DENOISER_PATH)
    return _missing_denoiser_file(path) is None and (DENOISER, str(path)) not in _failed


def load_denoiser(device: torch.device | str = "cpu", path: Path | None = None) -> DiffusionDenoiser:
    """Lesson 4's :class:`~diffusion.lessons.denoising.denoiser.DiffusionDenoiser`, loaded once per device and shared.

    Raises:
        ModelUnavailable: The folder is missing, incomplete or corrupt (remembered).
    """
    path = Path(path or DENOISER_PATH)
    device = torch.device(device)

    def load() -> DiffusionDenoiser:
        missing = _missing_denoiser_file(path)
        if missing:
            raise ModelUnavailable(DENOISER, path, missing)
        try:
            return DiffusionDenoiser.from_folder(path, device)
        except Exception as error:  # JSON, safetensors, shape or config errors: a corrupt folder
            raise ModelUnavailable(DENOISER, path, f"it could not be loaded ({type(error).__name__})") from error

    return _load_once(DENOISER, path, device, load)


# Lesson 5: the embedded text-to-image pipeline, and at most one hub pipeline at a time.
T2I = "text2image"
T2I_PATH = MODELS_DIR / "tiny-shapes-sd"
T2I_REQUIRED_FILES = ("model_index.json", "scheduler/scheduler_config.json", "tokenizer/tokenizer_config.json",
                      "text_encoder/config.json", "text_encoder/model.safetensors", "unet/config.json",
                      "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
                      "vae/diffusion_pytorch_model.safetensors")
_hub: dict[tuple[str, str], Any] = {}


def _missing_t2i_file(path: Path) -> str | None:
    return next((f"{name} is missing" for name in T2I_REQUIRED_FILES if not (path / name).is_file()), None)


def text2image_available(path: Path | None = None) -> bool:
    """Whether the embedded text-to-image folder is complete and has not failed to load. Loads nothing."""
    path = Path(path or T2I_PATH)
    return _missing_t2i_file(path) is None and (T2I, str(path)) not in _failed


def load_text2image(ref: str | Path | None = None, device: torch.device | str = "cpu", offline: bool = False) -> Any:
    """A text-to-image pipeline, loaded once and shared: the embedded folder (``ref`` None) or ``ref``.

    The embedded model stays cached; of other models (hub ids, local folders) only the
    most recent one is kept, so switching models does not pile up gigabytes.

    Raises:
        ModelUnavailable: The embedded folder is missing or corrupt (remembered).
        InputError: ``model_load_failed`` for another model that cannot be loaded.
    """
    from diffusion.lessons.text2image import pipeline as text2image  # diffusers' pipeline classes load slowly: only when needed

    device = torch.device(device)
    if ref is None or Path(ref) == T2I_PATH:
        def load() -> Any:
            missing = _missing_t2i_file(T2I_PATH)
            if missing:
                raise ModelUnavailable(T2I, T2I_PATH, missing)
            try:
                return text2image.load_pipeline(str(T2I_PATH), device, offline=True)
            except InputError as error:
                raise ModelUnavailable(T2I, T2I_PATH, "it could not be loaded") from error
        return _load_once(T2I, T2I_PATH, device, load)
    key = (str(ref), str(device))
    with _lock:
        if key not in _hub:
            _hub.clear()  # drop the previous big model before loading the next one
            if device.type == "cuda":
                torch.cuda.empty_cache()
            _hub[key] = text2image.load_pipeline(str(ref), device, offline=offline)
        return _hub[key]
