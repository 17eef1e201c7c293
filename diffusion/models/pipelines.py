"""Text-to-image pipelines by hub id or local folder, through diffusers' auto-pipeline API, with a content filter.

Safetensors only; fp16 on CUDA.

The content filter. A class typing prompts into a real Stable Diffusion model needs one, so
:func:`load_pipeline` loads one by default (``safety=True``):

1. a model whose ``model_index.json`` lists a ``safety_checker`` (SD 1.x) gets its own, with
   its own ``feature_extractor``;
2. a model without one (SD 2.x, SD-Turbo, SDXL) gets the standard Stable Diffusion checker,
   :data:`STANDARD_CHECKER` (a ``StableDiffusionSafetyChecker``: CLIP ViT-L/14 image embeddings
   compared with 17 concept embeddings and 3 "special care" ones, Rombach et al. 2022's
   release), with ``CLIPImageProcessor()``, whose defaults are SD's feature extractor config
   (shortest edge 224, bicubic, centre crop 224², OpenAI CLIP mean and std);
3. a filter that cannot be loaded (offline, missing, pickle weights only) refuses the model
   with a clear error instead of running it unfiltered.

The checker is kept out of the pipeline's own components (``safety_checker=None``): the
pipeline then never blacks out a picture behind the lesson's back, and the lesson, which shows
live x̂₀ previews and every step, not only the final picture, applies the filter itself to
every picture it shows. The loaded filter rides on the pipeline as :class:`ContentChecker`
(attribute :data:`CHECKER_ATTRIBUTE`); ``diffusion.lessons.text2image.safety`` runs it.

The embedded shapes model needs none: the registry loads it with ``safety=False``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoPipelineForText2Image, DiffusionPipeline
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPImageProcessor

from diffusion.errors import InputError

STANDARD_CHECKER = "CompVis/stable-diffusion-safety-checker"
CHECKER_ATTRIBUTE = "content_checker"
NO_FILTER_HINT = "The operator can turn the filter off with --no-safety-checker (safety=False in Python)."


@dataclass(frozen=True, eq=False)
class ContentChecker:
    """A loaded content filter: the checker network (on the pipeline's device and dtype) and its feature extractor.

    ``source`` says where it came from: ``"<model>/safety_checker"`` or the standard checker's id.
    """

    checker: torch.nn.Module
    feature_extractor: Any
    source: str


def load_pipeline(ref: str, device: torch.device | str = "cpu", offline: bool = False, safety: bool = True,
                  checker_id: str | None = None) -> Any:
    """``AutoPipelineForText2Image.from_pretrained(ref)`` with safetensors only, fp16 on CUDA, and a content filter.

    Args:
        ref: A hub id or a local diffusers folder.
        device: Where the pipeline (and its filter) run.
        offline: Never reach the Hugging Face Hub (a local folder never does).
        safety: Load a content filter (see the module docstring) and attach it as
            :data:`CHECKER_ATTRIBUTE`; False attaches none (the embedded model, ``--no-safety-checker``).
        checker_id: The checker for a model without its own (hub id or local folder);
            None: :data:`STANDARD_CHECKER`, read when called.

    Returns:
        The pipeline, its own ``safety_checker`` None; ``attached_checker(pipe)`` gives the filter.

    Raises:
        InputError: ``model_load_failed`` when the model is missing, offline, gated or corrupt;
            ``content_filter_unavailable`` when ``safety`` is on and the filter cannot be loaded.
    """
    if not isinstance(safety, bool):
        raise InputError("bad_choice", "{name} must be one of: {choices} (got {value}).", name="safety",
                         choices="True, False", value=str(safety)[:40])
    device = torch.device(device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    local = Path(ref).is_dir()
    content = None
    if safety:  # the filter first: a model it cannot guard is not worth gigabytes of download
        index = _model_index(ref, local, offline)
        content = load_content_checker(ref, index, device, dtype, offline=offline, checker_id=checker_id)
    try:
        pipe = AutoPipelineForText2Image.from_pretrained(
            ref, use_safetensors=True, dtype=dtype, local_files_only=local or offline,
            safety_checker=None, requires_safety_checker=False)
    except Exception as error:  # noqa: BLE001 - network, missing files, bad configs: all "cannot load"
        raise _load_failed(ref, local, error) from error
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    setattr(pipe, CHECKER_ATTRIBUTE, content)
    return pipe


def attached_checker(pipe: Any) -> ContentChecker | None:
    """The content filter :func:`load_pipeline` attached to ``pipe``, or None (filter off, embedded model)."""
    content = getattr(pipe, CHECKER_ATTRIBUTE, None)
    return content if isinstance(content, ContentChecker) else None


def own_checker(index: dict[str, Any]) -> str | None:
    """The class name of the ``safety_checker`` a pipeline's ``model_index.json`` lists, or None.

    ``[null, null]`` (SD 2.x, SD-Turbo) and a missing entry (SDXL) both mean none.
    """
    entry = index.get("safety_checker")
    if isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1]:
        return str(entry[1])
    return None


def load_content_checker(ref: str, index: dict[str, Any], device: torch.device | str, dtype: torch.dtype, *,
                         offline: bool = False, checker_id: str | None = None) -> ContentChecker:
    """The content filter for the model ``ref`` whose ``model_index.json`` is ``index`` (module docstring, 1-3).

    Args:
        ref: The model (hub id or local folder).
        index: Its ``model_index.json``.
        device: Where the checker runs.
        dtype: Its weights' dtype (the pipeline's).
        offline: Never reach the hub.
        checker_id: The standard checker's id or folder (None: :data:`STANDARD_CHECKER`).

    Raises:
        InputError: ``content_filter_unavailable`` with the reason (offline, missing, no safetensors).
    """
    own = own_checker(index)
    if own is not None:
        source, folder, subfolder = f"{ref}/safety_checker", ref, "safety_checker"
        if own != StableDiffusionSafetyChecker.__name__:
            raise _filter_failed(ref, f"its safety checker {own} is not one this app can run")
    else:
        source = folder = checker_id or STANDARD_CHECKER
        subfolder = ""
    local = Path(folder).is_dir()
    if local and not any((Path(folder) / subfolder).glob("*.safetensors")):
        raise _filter_failed(ref, f"{source} has no safetensors weights, and pickle files are not loaded")
    try:
        checker = StableDiffusionSafetyChecker.from_pretrained(
            folder, subfolder=subfolder, use_safetensors=True, local_files_only=local or offline, dtype=dtype)
        if own is not None and _lists(index, "feature_extractor"):
            features = CLIPImageProcessor.from_pretrained(folder, subfolder="feature_extractor", use_safetensors=True,
                                                          local_files_only=local or offline)
        else:
            features = CLIPImageProcessor()  # its defaults are SD's feature_extractor/preprocessor_config.json
    except Exception as error:  # noqa: BLE001 - network, missing files, bad configs: no filter
        raise _filter_failed(ref, _checker_reason(source, local, offline, error)) from error
    checker = checker.to(torch.device(device)).eval().requires_grad_(False)
    return ContentChecker(checker=checker, feature_extractor=features, source=source)


def _model_index(ref: str, local: bool, offline: bool) -> dict[str, Any]:
    """``model_index.json`` of ``ref`` (downloads that one small file for a hub id)."""
    try:
        if local:
            index = json.loads((Path(ref) / "model_index.json").read_text(encoding="utf-8"))
        else:
            index = DiffusionPipeline.load_config(ref, local_files_only=offline)
    except Exception as error:  # noqa: BLE001 - as in load_pipeline: "cannot load"
        raise _load_failed(ref, local, error) from error
    if not isinstance(index, dict):
        raise _load_failed(ref, local, TypeError("model_index.json is not an object"))
    return index


def _lists(index: dict[str, Any], name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and bool(entry[1])


def _load_failed(ref: str, local: bool, error: BaseException) -> InputError:
    reason = "no internet connection or not downloaded yet" if isinstance(error, OSError) and not local else \
        type(error).__name__
    return InputError("model_load_failed", "The model {model} could not be loaded ({reason}). "
                      "The embedded model still works.", model=Path(ref).name if local else ref, reason=reason)


def _checker_reason(source: str, local: bool, offline: bool, error: BaseException) -> str:
    if "safetensors" in str(error):
        return f"{source} has no safetensors weights, and pickle files are not loaded"
    if isinstance(error, OSError) and not local:
        where = "the server is offline" if offline else "no internet connection"
        return f"{source} is not downloaded yet and {where}"
    return f"{source}: {type(error).__name__}"


def _filter_failed(ref: str, reason: str) -> InputError:
    model = Path(ref).name if Path(ref).is_dir() else ref
    return InputError("content_filter_unavailable", "The content filter for {model} could not be loaded ({reason}), "
                      "so the model is not loaded. " + NO_FILTER_HINT, model=model, reason=reason)
