"""What a student asks lesson 6's pipeline for: the request, its limits and which models are allowed."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
)

from diffusion.errors import InputError, check_choice, check_range

EMBEDDED = "embedded"
SUGGESTED = ("stabilityai/sd-turbo", "stable-diffusion-v1-5/stable-diffusion-v1-5",
             "stabilityai/stable-diffusion-2-1-base", "stabilityai/sdxl-turbo")
SCHEDULERS: dict[str, tuple[type, dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_ancestral": (EulerAncestralDiscreteScheduler, {}),
    "dpm_solver": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "lcm": (LCMScheduler, {}),
}
MAX_PROMPT_CHARS = 1000
MAX_SIDE, MAX_PIXELS = 1024, 1024 * 1024
LIMITS = {"num_inference_steps": (1, 100), "guidance_scale": (0.0, 20.0), "seed": (0, 2**31 - 1),
          "batch_size": (1, 4), "strength": (0.05, 1.0), "side": (64, MAX_SIDE)}
# What suits each offered model (item "per-model defaults" of the lesson): choosing a model
# in the tab sets these; the student can still change every one. ``side`` 0: the model's own.


@dataclass(frozen=True)
class ModelDefaults:
    """A model's sensible settings: steps, guidance, size, the schedulers that apply and a guidance sweep."""

    num_inference_steps: int
    guidance_scale: float
    side: int
    schedulers: tuple[str, ...]
    scheduler: str
    sweep: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe fields."""
        return {"num_inference_steps": self.num_inference_steps, "guidance_scale": self.guidance_scale,
                "side": self.side, "schedulers": list(self.schedulers), "scheduler": self.scheduler,
                "sweep": list(self.sweep)}


_MULTI_STEP = ("ddim", "ddpm", "euler", "euler_ancestral", "dpm_solver")
# The embedded model: its card measures guidance 2 best (94.0 % / 87.6 % of attributes).
EMBEDDED_DEFAULTS = ModelDefaults(30, 2.0, 0, _MULTI_STEP, "ddim", (1.0, 2.0, 5.0, 10.0))
# SD 1.x / 2.x: the model cards' 50 steps and guidance 7.5; 30 DPM-Solver++ steps do as well.
SD_DEFAULTS = ModelDefaults(30, 7.5, 0, _MULTI_STEP, "dpm_solver", (1.0, 3.0, 7.5, 15.0))
# SD-Turbo / SDXL-Turbo (adversarial diffusion distillation): 1–4 steps, no guidance (their cards).
TURBO_DEFAULTS = ModelDefaults(1, 0.0, 512, ("euler", "euler_ancestral", "ddim"), "euler",
                               (0.0, 1.0, 2.0, 4.0))
MODEL_DEFAULTS: dict[str, ModelDefaults] = {
    EMBEDDED: EMBEDDED_DEFAULTS,
    "stabilityai/sd-turbo": TURBO_DEFAULTS,
    "stabilityai/sdxl-turbo": TURBO_DEFAULTS,
    "stable-diffusion-v1-5/stable-diffusion-v1-5": SD_DEFAULTS,
    "stabilityai/stable-diffusion-2-1-base": SD_DEFAULTS,
}


def defaults_for(model: str, lcm_model: bool = False) -> ModelDefaults:
    """The settings that suit ``model`` (a choice of the tab: ``"embedded"``, a hub id or a local folder).

    Unlisted models get Stable Diffusion's, a "turbo" in the name gets the distilled
    models' 1-step settings, and an LCM-distilled model (its own scheduler is LCM) 4 LCM steps
    at guidance 1 (Luo et al. 2023).
    """
    if lcm_model:
        return ModelDefaults(4, 1.0, 0, ("lcm",), "lcm", (1.0, 1.5, 2.0, 3.0))
    if model in MODEL_DEFAULTS:
        return MODEL_DEFAULTS[model]
    return TURBO_DEFAULTS if "turbo" in str(model).lower() else SD_DEFAULTS


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


@dataclass(frozen=True)
class T2IRequest:
    """One generation. ``width``/``height`` 0 mean the model's own size; ``strength`` is used with an init image."""

    prompt: str = "a large red circle in the center on a white background"
    negative_prompt: str = ""
    num_inference_steps: int = 30
    guidance_scale: float = EMBEDDED_DEFAULTS.guidance_scale
    seed: int = 0
    scheduler: str = "ddim"
    width: int = 0
    height: int = 0
    batch_size: int = 1
    strength: float = 0.6

    def validated(self, default_side: int, lcm_model: bool = False) -> T2IRequest:
        """Checked, normalised copy; sizes filled in from the model and rounded down to multiples of 8.

        Raises:
            InputError: Any field out of range or of the wrong type.
        """
        prompt, negative = _text("prompt", self.prompt), _text("negative_prompt", self.negative_prompt)
        scheduler = check_choice("scheduler", self.scheduler, tuple(SCHEDULERS))
        if scheduler == "lcm" and not lcm_model:
            raise InputError("lcm_only", "The LCM scheduler only works with LCM-distilled models; "
                             "choose another scheduler.")
        sides = []
        for name, value in (("width", self.width), ("height", self.height)):
            side = int(check_range(name, value, 0, LIMITS["side"][1], integer=True))
            if side == 0:
                side = default_side
            elif side < LIMITS["side"][0]:
                raise InputError("out_of_range", "{name} must be between {lo} and {hi} (it is {value}).",
                                 name=name, lo=LIMITS["side"][0], hi=LIMITS["side"][1], value=side)
            sides.append(side // 8 * 8)
        return replace(
            self, prompt=prompt, negative_prompt=negative, scheduler=scheduler, width=sides[0], height=sides[1],
            num_inference_steps=int(check_range("num_inference_steps", self.num_inference_steps,
                                                *LIMITS["num_inference_steps"], integer=True)),
            guidance_scale=check_range("guidance_scale", self.guidance_scale, *LIMITS["guidance_scale"]),
            seed=int(check_range("seed", self.seed, *LIMITS["seed"], integer=True)),
            batch_size=int(check_range("batch_size", self.batch_size, *LIMITS["batch_size"], integer=True)),
            strength=check_range("strength", self.strength, *LIMITS["strength"]))


def _text(name: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError("not_text", "{name} must be text.", name=name)
    value = "".join(ch for ch in value if ch.isprintable() or ch in "\n\t").strip()
    if len(value) > MAX_PROMPT_CHARS:
        raise InputError("prompt_too_long", "{name} is {n} characters long; the limit is {limit}.",
                         name=name, n=len(value), limit=MAX_PROMPT_CHARS)
    return value


def resolve_model(name: Any, embedded_path: Path, extra: tuple[str, ...] = (), allow_any: bool = False) -> str:
    """Map a model choice to what ``from_pretrained`` gets: the embedded folder, a local folder or a hub id.

    Args:
        name: ``"embedded"``, one of :data:`SUGGESTED` or ``extra`` (set by the operator,
            which may include local folders), or, with ``allow_any``, any hub id ``owner/name``.
            Paths typed by users are never accepted.
        embedded_path: The embedded model's folder.

    Raises:
        InputError: ``model_not_allowed`` for anything else.
    """
    if not isinstance(name, str) or not name.strip() or name.strip() == EMBEDDED:
        return str(embedded_path)
    name = name.strip()
    if name in SUGGESTED or name in extra:
        return name
    if allow_any and _HUB_ID.match(name) and ".." not in name:
        return name
    raise InputError("model_not_allowed", "The model {model} is not offered here. Choose one of the listed models "
                     "(the server's operator can allow others).", model=name[:80])
