"""The server's settings, chosen on the command line and shared by every tab."""

from __future__ import annotations

from dataclasses import dataclass, field

from diffusion.serving.render_pool import RenderPool


@dataclass(frozen=True)
class AppSettings:
    """Server settings chosen on the command line, shared by every tab."""

    device: str = "cpu"
    device_label: str = "CPU"
    light_concurrency: int = 8
    heavy_concurrency: int = 1
    max_queue: int = 64
    max_upload_mb: int = 10
    lang: str = "auto"
    t2i_models: tuple[str, ...] = ()  # text-to-image models the operator offers (ids or folders), first = default
    allow_any_model: bool = False     # let users type any hub id (a public Space should not)
    offline: bool = False             # never reach the Hugging Face Hub
    zero_gpu: bool = False            # running on a ZeroGPU Space
    # Processes that draw figures beside the server (none by default: tests and notebooks draw in-process).
    render_pool: RenderPool = field(default_factory=lambda: RenderPool(0), compare=False, repr=False)
