"""The registry: ONE table of the models that ship with the app, loaded lazily, once, and cached.

Each model is a diffusers folder under ``assets/models/<name>/``:

* ``unet2d`` (lesson 4's digit model, ``python -m diffusion.train mnist --export DIR``):
  ``unet/`` and ``scheduler/``, loadable with ``UNet2DModel`` / ``DDPMScheduler``;
* ``denoiser`` (lesson 5, ``python -m diffusion.train denoiser --export DIR``): the same
  plus ``denoiser.json`` (its noise range);
* ``pipeline`` (lesson 6, ``python -m diffusion.train text2image --export DIR``): a whole
  ``StableDiffusionPipeline`` folder;
* ``autoencoder`` (lesson 7, ``python -m diffusion.train autoencoder --export DIR``): one
  ``DigitAutoencoder`` (``config.json`` + safetensors).

Every folder also has ``README.md`` (the model card) and ``train_info.json``.

Loading uses safetensors only and never touches the network. A folder that is missing
or does not load raises :class:`ModelUnavailable` and is remembered, so the user
interface can disable the one lesson that needs it while the rest keeps working.

This module sits below the lessons: it returns diffusers objects and plain configs. A
lesson that wraps a model in its own class passes the wrapper as ``build`` to :func:`load`.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffusion.datasets.digits import IMAGE_SIZE, NUM_CLASSES
from diffusion.errors import InputError

MODELS_DIR = Path(__file__).resolve().parents[2] / "assets" / "models"
UNET_FILES = ("unet/config.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json")
PIPELINE_FILES = ("model_index.json", "scheduler/scheduler_config.json", "tokenizer/tokenizer_config.json",
                  "text_encoder/config.json", "text_encoder/model.safetensors", "unet/config.json",
                  "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
                  "vae/diffusion_pytorch_model.safetensors")
AUTOENCODER_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


@dataclass(frozen=True)
class ModelSpec:
    """One shipped model: its folder, what kind it is and what the lesson expects of it.

    ``image_size``, ``in_channels`` and ``num_class_embeds`` are checked against a
    ``unet2d`` model's config (0 = not checked).
    """

    path: Path
    kind: str  # "unet2d" | "denoiser" | "pipeline" | "autoencoder" (see the module docstring)
    title: str
    image_size: int = 0
    in_channels: int = 0
    num_class_embeds: int = 0

    @property
    def required_files(self) -> tuple[str, ...]:
        """The files a complete folder of this kind has."""
        return {"unet2d": UNET_FILES, "denoiser": UNET_FILES + ("denoiser.json",),
                "pipeline": PIPELINE_FILES, "autoencoder": AUTOENCODER_FILES}[self.kind]

    def at(self, path: str | Path) -> ModelSpec:
        """The same model read from another folder (tests, a replaced model)."""
        return replace(self, path=Path(path))


MODELS: dict[str, ModelSpec] = {
    "mnist": ModelSpec(path=MODELS_DIR / "mnist-ddpm", kind="unet2d",
                       title="Class-conditional DDPM on MNIST digits", image_size=IMAGE_SIZE,
                       in_channels=1, num_class_embeds=NUM_CLASSES + 1),
    "denoiser": ModelSpec(path=MODELS_DIR / "photo-denoiser", kind="denoiser",
                          title="Noise-conditional photo denoiser (lesson 5)"),
    "text2image": ModelSpec(path=MODELS_DIR / "tiny-shapes-sd", kind="pipeline",
                            title="Tiny Stable Diffusion of coloured shapes (lesson 6)"),
    "autoencoder": ModelSpec(path=MODELS_DIR / "digit-autoencoder", kind="autoencoder",
                             title="Convolutional autoencoder of MNIST digits (lesson 7)",
                             image_size=IMAGE_SIZE),
}
DENOISER, T2I, AUTOENCODER = "denoiser", "text2image", "autoencoder"


class ModelUnavailable(InputError):
    """A registered model cannot be used: its folder is missing, incomplete or corrupt."""

    def __init__(self, name: str, path: Path, reason: str) -> None:
        super().__init__("model_unavailable", "The model {name} is not available at {path}: {reason}.",
                         name=name, path=str(path), reason=reason)


_cache: dict[tuple[str, str, str], Any] = {}
_failed: dict[tuple[str, str], str] = {}
_hub: dict[tuple[str, str], Any] = {}
_digests: dict[str, tuple[tuple, str]] = {}
_lock = threading.Lock()


def spec(name: str) -> ModelSpec:
    """The table's entry ``name``; ``InputError("bad_choice")`` for an unknown one."""
    if name not in MODELS:
        raise InputError("bad_choice", "model must be one of: {choices} (got {value}).",
                         choices=", ".join(MODELS), value=str(name)[:40])
    return MODELS[name]


def missing_file(path: Path, files: tuple[str, ...] = UNET_FILES) -> str | None:
    """The first of ``files`` that ``path`` lacks, as a reason, or None."""
    return next((f"{name} is missing" for name in files if not (Path(path) / name).is_file()), None)


def available(name: str) -> bool:
    """Whether ``name`` is registered, has all its files and has not failed to load. Loads nothing."""
    if name not in MODELS:
        return False
    entry = MODELS[name]
    return missing_file(entry.path, entry.required_files) is None and (name, str(entry.path)) not in _failed


def denoiser_available() -> bool:
    """:func:`available` for lesson 5's denoiser."""
    return available(DENOISER)


def text2image_available() -> bool:
    """:func:`available` for lesson 6's embedded pipeline."""
    return available(T2I)


def load(name: str, device: torch.device | str, build: Callable[[Path, torch.device], Any]) -> Any:
    """``build(folder, device)`` for the registered model ``name``, once per (name, folder, device).

    Args:
        name: A key of :data:`MODELS`.
        device: Where the model runs; each device gets its own cached copy.
        build: Makes the object from a complete folder; any exception it raises means
            the folder is corrupt.

    Raises:
        ModelUnavailable: The folder is missing, incomplete or corrupt (remembered, see :func:`available`).
    """
    entry, device = spec(name), torch.device(device)
    key = (name, str(entry.path), str(device))
    with _lock:  # one load at a time: a second caller waits and then finds it cached
        if key not in _cache:
            try:
                missing = missing_file(entry.path, entry.required_files)
                if missing:
                    raise ModelUnavailable(name, entry.path, missing)
                try:
                    _cache[key] = build(entry.path, device)
                except ModelUnavailable:
                    raise
                except Exception as error:  # JSON, safetensors, shape or config errors: a corrupt folder
                    why = "" if isinstance(error, InputError) else f" ({type(error).__name__})"
                    raise ModelUnavailable(name, entry.path, f"it could not be loaded{why}") from error
            except ModelUnavailable as error:
                _failed[(name, str(entry.path))] = str(error)
                raise
            _failed.pop((name, str(entry.path)), None)
        return _cache[key]


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
    missing = missing_file(path)
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
        wrong = {k: unet.config.get(k) for k, v in expected.items() if v and unet.config.get(k) != v}
        if wrong:
            raise ModelUnavailable(name, path, f"its configuration does not fit this lesson ({wrong})")
    return unet.to(torch.device(device)).eval().requires_grad_(False), scheduler_config


def load_unet_model(name: str, device: torch.device | str = "cpu") -> tuple[UNet2DModel, Any]:
    """The registered ``unet2d`` model ``name`` on ``device``, loaded once and then shared.

    Returns:
        ``(unet, scheduler_config)``. Treat the model as read-only: callers share it.

    Raises:
        ModelUnavailable: The folder is missing or corrupt (remembered, see :func:`available`).
        InputError: ``bad_choice`` for an unknown name.
    """
    entry = spec(name)
    return load(name, device, lambda path, dev: load_unet_folder(path, dev, name=name, spec=entry))


def load_autoencoder(device: torch.device | str = "cpu") -> Any:
    """Lesson 7's digit autoencoder on ``device`` (eval mode, no gradients), loaded once and shared.

    Returns:
        A :class:`~diffusion.models.digit_autoencoder.DigitAutoencoder`; treat it as read-only.

    Raises:
        ModelUnavailable: The folder is missing or corrupt (its config is checked when it is built).
    """
    from diffusion.models.digit_autoencoder import DigitAutoencoder

    def build(path: Path, dev: torch.device) -> Any:
        model = DigitAutoencoder.from_pretrained(path, use_safetensors=True, local_files_only=True)
        return model.to(dev).eval().requires_grad_(False)

    return load(AUTOENCODER, device, build)


def load_text2image(ref: str | Path | None = None, device: torch.device | str = "cpu", offline: bool = False,
                    safety: bool = True) -> Any:
    """A text-to-image pipeline, loaded once and shared: the embedded folder (``ref`` None) or ``ref``.

    The embedded model stays cached and never gets a content filter (it draws coloured
    shapes). Of other models (hub ids, local folders) only the most recent one is kept, so
    switching models does not pile up gigabytes; with ``safety`` it carries its content filter
    (:func:`~diffusion.models.pipelines.load_pipeline`), and the same model with the filter
    on and off are two cache entries.

    Raises:
        ModelUnavailable: The embedded folder is missing or corrupt (remembered).
        InputError: ``model_load_failed`` for another model that cannot be loaded;
            ``content_filter_unavailable`` when ``safety`` is on and its filter cannot be loaded.
    """
    from diffusion.models.pipelines import load_pipeline  # diffusers' pipeline classes load slowly

    device = torch.device(device)
    if ref is None or Path(ref) == MODELS[T2I].path:
        return load(T2I, device, lambda path, dev: load_pipeline(str(path), dev, offline=True, safety=False))
    key = (str(ref), str(device), safety)
    with _lock:
        if key not in _hub:
            _hub.clear()  # drop the previous big model before loading the next one
            if device.type == "cuda":
                torch.cuda.empty_cache()
            _hub[key] = load_pipeline(str(ref), device, offline=offline, safety=safety)
        return _hub[key]


def weights_digest(ref: str | Path) -> str:
    """A digest of a model's weights, for keying results: the name's folder (or ``ref`` itself,
    a folder or a hub id) hashed over its safetensors and JSON files, once per folder.

    Results computed with other weights (a retrained model dropped in place) never match.
    """
    folder = MODELS[ref].path if isinstance(ref, str) and ref in MODELS else Path(ref)
    if not folder.is_dir():  # a hub id: its name is all there is before it is downloaded
        return hashlib.sha256(str(ref).encode()).hexdigest()[:16]
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".safetensors", ".json") and p.is_file())
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    with _lock:
        cached = _digests.get(str(folder))
        if cached is not None and cached[0] == stamp:
            return cached[1]
    digest = hashlib.sha256()
    for p in files:
        digest.update(str(p.relative_to(folder)).encode())
        with open(p, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    value = digest.hexdigest()[:16]
    with _lock:
        _digests[str(folder)] = (stamp, value)
    return value


def clear_cache() -> None:
    """Forget loaded models and remembered failures (after replacing a model folder)."""
    with _lock:
        _cache.clear()
        _hub.clear()
        _failed.clear()
