"""Text-to-image pipelines by hub id or local folder, through diffusers' auto-pipeline API.

Safetensors only; fp16 on CUDA. The content filter (``safety_checker``) is not loaded:
the embedded shapes model has none and needs none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AutoPipelineForText2Image

from diffusion.errors import InputError


def load_pipeline(ref: str, device: torch.device | str = "cpu", offline: bool = False) -> Any:
    """``AutoPipelineForText2Image.from_pretrained(ref)`` with safetensors only, fp16 on CUDA.

    Raises:
        InputError: ``model_load_failed`` when the model is missing, offline, gated or corrupt.
    """
    device = torch.device(device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    local = Path(ref).is_dir()
    try:
        pipe = AutoPipelineForText2Image.from_pretrained(
            ref, use_safetensors=True, dtype=dtype, local_files_only=local or offline,
            safety_checker=None, requires_safety_checker=False)
    except Exception as error:  # noqa: BLE001 - network, missing files, bad configs: all "cannot load"
        reason = "no internet connection or not downloaded yet" if isinstance(error, OSError) and not local else \
            type(error).__name__
        raise InputError("model_load_failed", "The model {model} could not be loaded ({reason}). "
                         "The embedded model still works.", model=Path(ref).name if local else ref,
                         reason=reason) from error
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
