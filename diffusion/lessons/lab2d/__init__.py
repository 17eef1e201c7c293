"""The 2-D lab: a diffusion model you train live, with its score field next to the exact one.

A student picks (or draws, or types) a 2-D point set, watches it dissolve into N(0, I)
under the forward process, trains a small MLP ε-predictor in seconds, samples it with
DDPM and DDIM from the same starting noise, and compares the learned score with the
exact score of the training set (a Gaussian mixture, known in closed form), whose
samples are copies of the training points. In a notebook::

    from diffusion.lessons import lab2d
    data = lab2d.make_dataset("moons", 2000, seed=0)
    run = lab2d.new_run(data)
    lab2d.train(run)                                        # ~5 s on one CPU core
    ddim = lab2d.sample(run, "ddim", 50, seed=1)
    exact = lab2d.sample(run, "ddim", 50, seed=1, predictor="exact")
    learned, exact_s, error = lab2d.score_field(run, t=100)
    lab2d.sliced_wasserstein(ddim.samples, data.fresh(5000, seed=7))

Modules: :mod:`~.config` (LIMITS, DEFAULTS), :mod:`~.data` and :mod:`~.drawn` (point
sets), :mod:`~.forward` (DDPM eq. 4), :mod:`~.exact` (the exact score), :mod:`~.model`
(the MLP), :mod:`~.training` (Algorithm 1, resumable), :mod:`~.sampling` (DDPM / DDIM),
:mod:`~.field` (score fields), :mod:`~.metrics`, and :mod:`~.figures` (matplotlib; import
it as ``from diffusion.lessons.lab2d import figures``).
"""

from diffusion.lessons.lab2d.config import (
    BUILTIN_DATASETS, DATASETS, DEFAULTS, LIMITS, PREDICTORS, SAMPLERS, SCHEDULES,
)
from diffusion.lessons.lab2d.data import Dataset, make_dataset, moons_clean
from diffusion.lessons.lab2d.drawn import BOX, cjk_text_supported, from_strokes, from_text
from diffusion.lessons.lab2d.exact import exact_eps, exact_score, log_density, posterior_mean
from diffusion.lessons.lab2d.field import ScoreField, learned_score, make_grid, score_field
from diffusion.lessons.lab2d.forward import (
    ForwardPoints, alpha_bar_table, forward_points, heat_time, q_sample, training_scheduler,
)
from diffusion.lessons.lab2d.metrics import (
    distribution_report, memorisation, nearest_distance, sliced_wasserstein, wasserstein_1d,
)
from diffusion.lessons.lab2d.model import EpsMLP, ModelConfig, build_model
from diffusion.lessons.lab2d.sampling import SampleTrajectory, build_scheduler, initial_noise, sample
from diffusion.lessons.lab2d.training import Lab2DRun, TrainConfig, TrainSummary, learning_rate_at, new_run, train
from diffusion.reverse import StepInfo

__all__ = [
    "BOX", "BUILTIN_DATASETS", "DATASETS", "DEFAULTS", "LIMITS", "PREDICTORS", "SAMPLERS", "SCHEDULES",
    "Dataset", "EpsMLP", "ForwardPoints", "Lab2DRun", "ModelConfig", "SampleTrajectory", "ScoreField", "StepInfo",
    "TrainConfig", "TrainSummary",
    "alpha_bar_table", "build_model", "build_scheduler", "cjk_text_supported", "distribution_report", "exact_eps",
    "exact_score", "forward_points", "from_strokes", "from_text", "heat_time", "initial_noise", "learned_score",
    "learning_rate_at", "log_density", "make_dataset", "make_grid", "memorisation", "moons_clean",
    "nearest_distance", "new_run", "posterior_mean", "q_sample", "sample", "score_field", "sliced_wasserstein",
    "train", "training_scheduler", "wasserstein_1d",
]
