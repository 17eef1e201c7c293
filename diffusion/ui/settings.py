"""The server's settings, chosen on the command line and shared by every tab."""

from __future__ import annotations

from dataclasses import dataclass, field

from diffusion.serving.batching import Batcher
from diffusion.serving.cores import CoreShare
from diffusion.serving.jobs import JobQueue
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
    safety_checker: bool = True       # real text-to-image models run with their content filter (--no-safety-checker)
    zero_gpu: bool = False            # running on a ZeroGPU Space
    # Processes that draw figures beside the server (none by default: tests and notebooks draw in-process).
    render_pool: RenderPool = field(default_factory=lambda: RenderPool(0), compare=False, repr=False)
    max_jobs_per_client: int = 3      # model jobs one browser session may have waiting or running
    # CPU threads of model jobs (every core while no light request runs) and the one model-job queue.
    cores: CoreShare = field(default_factory=CoreShare, compare=False, repr=False)
    jobs: JobQueue | None = field(default=None, compare=False, repr=False)
    # The example runs the model tabs open with; ``app.start_examples`` computes them once, after start-up.
    examples: list = field(default_factory=list, compare=False, repr=False)
    batching: bool = False            # run queued sampling jobs of the same shape together (default on CUDA)

    def model_events(self) -> dict:
        """Event options of a model tab's main button.

        The handlers only wait on the job queue (:attr:`jobs`), which runs the models
        :attr:`heavy_concurrency` at a time, so every waiting student's handler runs at once
        and can show its place in the queue; gradio's own queue would show a spinner.
        """
        return dict(concurrency_id="model", concurrency_limit=self.max_queue)

    def __post_init__(self) -> None:
        if self.jobs is None:
            object.__setattr__(self, "jobs", JobQueue(workers=self.heavy_concurrency,
                                                      per_client=self.max_jobs_per_client,
                                                      before_job=self.cores.apply))
            if self.batching:
                self.jobs.batcher = Batcher()
