"""Forward noising checked against diffusers and against exact Gaussian statistics."""

from __future__ import annotations

import json
import math
import string

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from diffusion.lessons import noising
from diffusion.errors import InputError
from diffusion.lessons.noising import (
    SCHEDULES,
    StepwiseChain,
    export_gif,
    forward_noise,
    get_schedule,
    make_scheduler,
    noise_strip,
    q_sample,
    to_display,
)

DIFFUSERS_NAMES = {
    "linear": "linear",
    "cosine": "squaredcos_cap_v2",
    "scaled_linear": "scaled_linear",
    "sigmoid": "sigmoid",
}


def reference_scheduler(schedule: str, big_t: int) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=big_t, beta_start=1e-4, beta_end=0.02,
        beta_schedule=DIFFUSERS_NAMES[schedule],
    )


def test_schedules_cover_the_four_names():
    assert SCHEDULES == ("linear", "cosine", "scaled_linear", "sigmoid")


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("big_t", [10, 1000, 4000])
def test_schedule_tables_match_diffusers(schedule, big_t):
    reference = reference_scheduler(schedule, big_t)
    s = get_schedule(schedule, big_t)
    assert s.name == schedule and s.num_train_timesteps == big_t
    assert len(s.betas) == len(s.alpha_bar) == len(s.log_snr) == big_t + 1
    np.testing.assert_array_equal(s.alpha_bar[1:], reference.alphas_cumprod.double().numpy())
    np.testing.assert_array_equal(s.betas[1:], reference.betas.double().numpy())
    assert s.betas[0] == 0.0 and s.alpha_bar[0] == 1.0
    ab = reference.alphas_cumprod.double().numpy()
    np.testing.assert_allclose(s.sqrt_alpha_bar[1:], np.sqrt(ab), rtol=1e-12)
    np.testing.assert_allclose(s.sqrt_one_minus_alpha_bar[1:], np.sqrt(1 - ab), rtol=1e-12)
    np.testing.assert_allclose(s.snr[1:], ab / (1 - ab), rtol=1e-12)
    np.testing.assert_allclose(s.log_snr[1:], np.log(ab / (1 - ab)), rtol=1e-9, atol=1e-12)
    assert s.snr[0] == math.inf and s.log_snr[0] == math.inf
    assert s.sqrt_alpha_bar[0] == 1.0 and s.sqrt_one_minus_alpha_bar[0] == 0.0


def test_get_schedule_is_shared_and_read_only():
    s = get_schedule("linear", 1000)
    assert get_schedule("linear", 1000) is s
    with pytest.raises(ValueError):
        s.alpha_bar[3] = 0.5


def test_make_scheduler_config():
    scheduler = make_scheduler("cosine", 500)
    assert scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert scheduler.config.num_train_timesteps == 500
    linear = make_scheduler("linear")
    assert linear.config.num_train_timesteps == 1000
    assert math.isclose(linear.betas[0].item(), 1e-4, rel_tol=1e-6)
    assert math.isclose(linear.betas[-1].item(), 0.02, rel_tol=1e-6)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_q_sample_matches_add_noise_and_eq4(schedule):
    big_t = 1000
    reference = reference_scheduler(schedule, big_t)
    generator = torch.Generator().manual_seed(3)
    x0 = torch.rand((16, 16, 3), generator=generator) * 2 - 1
    eps = torch.randn((16, 16, 3), generator=generator)
    for t in (1, 2, 250, 999, 1000):
        got = q_sample(x0, t, eps, make_scheduler(schedule, big_t))
        expected = reference.add_noise(x0, eps, torch.tensor([t - 1]))
        assert torch.equal(got, expected)
        ab = reference.alphas_cumprod.double()[t - 1].item()
        by_hand = math.sqrt(ab) * x0.double() + math.sqrt(1 - ab) * eps.double()
        torch.testing.assert_close(got.double(), by_hand, rtol=0, atol=1e-6)
    assert torch.equal(q_sample(x0, 0, eps, reference), x0)


def constant_image(c: float, side: int = 128) -> np.ndarray:
    return np.full((side, side, 3), c, dtype=np.float32)


def test_stepwise_chain_has_the_eq4_marginal():
    # Composing eq. 2 t times gives x_t = sqrt(ᾱ_t) x_0 + (independent Gaussian with
    # variance 1 - ᾱ_t), exactly. Over N = 49152 independent pixels the sample mean has
    # standard error σ/√N and the sample std about σ/√(2N); 5 standard errors (plus
    # float32 rounding) makes a false failure a ~1e-6 event, and the seed is fixed.
    c = 0.5
    image = constant_image(c)
    n = image.size
    schedule = get_schedule("linear", 1000)
    chain = StepwiseChain(image, schedule, seed=11)
    for t in (1, 10, 100, 400, 1000):
        x = chain.x_at(t).double().numpy()
        sigma = math.sqrt(1 - schedule.alpha_bar[t])
        assert abs(x.mean() - math.sqrt(schedule.alpha_bar[t]) * c) <= 5 * sigma / math.sqrt(n) + 1e-5
        assert abs(x.std() - sigma) <= 5 * sigma / math.sqrt(2 * n) + 1e-5


def test_stepwise_chain_is_order_independent():
    image = np.random.default_rng(0).uniform(-1, 1, (24, 24, 3)).astype(np.float32)
    schedule = get_schedule("cosine", 1000)
    visited = StepwiseChain(image, schedule, seed=5)
    visited.x_at(700)
    later = visited.x_at(300)
    fresh = StepwiseChain(image, schedule, seed=5).x_at(300)
    assert torch.equal(later, fresh)
    # A different checkpoint spacing and a zig-zag walk still give the same bits.
    other = StepwiseChain(image, schedule, seed=5, checkpoint_every=7)
    for t in (999, 3, 301, 299, 300):
        other.x_at(t)
    assert torch.equal(other.x_at(300), fresh)
    assert torch.equal(visited.x_at(1000), other.x_at(1000))


def test_stepwise_chain_seeds():
    image = constant_image(0.0, side=16)
    schedule = get_schedule("linear", 100)
    a = StepwiseChain(image, schedule, seed=1).x_at(50)
    b = StepwiseChain(image, schedule, seed=1).x_at(50)
    c = StepwiseChain(image, schedule, seed=2).x_at(50)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_stepwise_chain_returns_copies_and_bounds_checkpoints():
    image = constant_image(0.2, side=8)
    chain = StepwiseChain(image, get_schedule("linear", 4000), seed=0)
    first = chain.x_at(10)
    first += 100.0
    assert torch.equal(chain.x_at(10), StepwiseChain(image, get_schedule("linear", 4000), seed=0).x_at(10))
    assert torch.equal(chain.x_at(0), torch.from_numpy(image))
    chain.x_at(4000)
    assert len(chain._checkpoints) <= noising.MAX_CHECKPOINTS + 1
    with pytest.raises(InputError):
        chain.x_at(4001)


def test_forward_noise_closed_form_uses_seeded_noise():
    image = np.random.default_rng(1).uniform(-1, 1, (20, 30, 3)).astype(np.float32)
    reference = reference_scheduler("sigmoid", 200)
    eps = torch.randn((20, 30, 3), generator=torch.Generator().manual_seed(42))
    chain = None
    for t in (0, 1, 73, 200):
        result = forward_noise(image, "sigmoid", 200, t, seed=42, chain=chain)
        chain = result.chain
        assert result.x_t.shape == image.shape and result.x_t.dtype == np.float32
        np.testing.assert_array_equal(result.noise, eps.numpy())
        expected = image if t == 0 else reference.add_noise(torch.from_numpy(image), eps, torch.tensor([t - 1])).numpy()
        np.testing.assert_array_equal(result.x_t, expected)
        np.testing.assert_array_equal(result.x0, image)
    np.testing.assert_array_equal(forward_noise(image, "sigmoid", 200, 0, seed=42).x_t_stepwise, image)


def test_forward_noise_replaces_a_chain_that_does_not_match():
    image = constant_image(0.1, side=12)
    first = forward_noise(image, "linear", 100, 60, seed=0)
    assert forward_noise(image, "linear", 100, 30, seed=0, chain=first.chain).chain is first.chain
    other = forward_noise(image, "linear", 100, 60, seed=1, chain=first.chain)
    assert other.chain is not first.chain
    np.testing.assert_array_equal(other.x_t_stepwise, StepwiseChain(image, get_schedule("linear", 100), 1).x_at(60).numpy())
    changed = forward_noise(image + 0.5, "linear", 100, 60, seed=0, chain=first.chain)
    assert changed.chain is not first.chain


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_summary_is_finite_json(schedule):
    image = constant_image(-0.3, side=16)
    big_t = 300
    reference = reference_scheduler(schedule, big_t)
    for t in (0, big_t):
        summary = forward_noise(image, schedule, big_t, t, seed=7).summary()
        text = json.dumps(summary, allow_nan=False)
        assert json.loads(text)["t"] == t
        expected_ab = 1.0 if t == 0 else reference.alphas_cumprod[t - 1].item()
        assert summary["alpha_bar"] == pytest.approx(expected_ab, rel=1e-7)
        assert summary["signal_coef"] == pytest.approx(math.sqrt(expected_ab), rel=1e-7)
        assert summary["noise_coef"] == pytest.approx(math.sqrt(1 - expected_ab), abs=1e-7)
        assert summary["schedule"] == schedule and summary["seed"] == 7
        assert summary["num_train_timesteps"] == big_t
        for key in ("mean", "std", "stepwise_mean", "stepwise_std"):
            assert math.isfinite(summary[key])
    clean = forward_noise(image, schedule, big_t, 0, seed=7).summary()
    assert clean["snr"] is None and clean["log_snr"] is None
    assert clean["mean"] == pytest.approx(-0.3, abs=1e-6) and clean["std"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"t": -1}, "out_of_range"),
        ({"t": 101}, "out_of_range"),
        ({"t": float("nan")}, "not_a_number"),
        ({"t": 2.5}, "not_an_integer"),
        ({"t": None}, "not_a_number"),
        ({"schedule": "quadratic"}, "bad_choice"),
        ({"num_train_timesteps": 5}, "out_of_range"),
        ({"num_train_timesteps": 5000}, "out_of_range"),
        ({"num_train_timesteps": "many"}, "not_a_number"),
        ({"seed": -1}, "out_of_range"),
        ({"seed": 2**32}, "out_of_range"),
        ({"x0": None}, "image_missing"),
        ({"x0": np.zeros((4,), np.float32)}, "image_bad_array"),
        ({"x0": np.full((4, 4, 3), np.nan, np.float32)}, "image_bad_array"),
    ],
)
def test_forward_noise_validation(kwargs, code):
    args = {"x0": constant_image(0.0, side=8), "schedule": "linear", "num_train_timesteps": 100, "t": 5, "seed": 0}
    args.update(kwargs)
    with pytest.raises(InputError) as info:
        forward_noise(**args)
    assert info.value.code == code


def test_noise_strip_matches_add_noise():
    image = np.random.default_rng(2).uniform(-1, 1, (10, 10, 3)).astype(np.float32)
    reference = reference_scheduler("scaled_linear", 100)
    eps = torch.randn((10, 10, 3), generator=torch.Generator().manual_seed(9))
    ts = [0, 50, 100, 50]
    strip = noise_strip(image, "scaled_linear", 100, 9, ts)
    assert len(strip) == 4
    np.testing.assert_array_equal(strip[0], image)
    for t, x in zip(ts[1:], strip[1:]):
        np.testing.assert_array_equal(x, reference.add_noise(torch.from_numpy(image), eps, torch.tensor([t - 1])).numpy())
    with pytest.raises(InputError):
        noise_strip(image, "scaled_linear", 100, 9, [0, 101])


def test_export_gif(tmp_path):
    image = np.random.default_rng(3).uniform(-1, 1, (24, 40, 3)).astype(np.float32)
    path = export_gif(image, "linear", 1000, 0, tmp_path / "noising.gif", n_frames=12, duration_ms=60)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.is_animated
        assert gif.n_frames == 12
        assert gif.size == (40, 24)
        gif.seek(gif.n_frames - 1)
        assert gif.info["duration"] >= 1500
    # With T below the frame count every timestep appears once.
    short = export_gif(image, "cosine", 10, 0, tmp_path / "short.gif", n_frames=40)
    with Image.open(short) as gif:
        assert gif.n_frames == 11


def test_to_display():
    x = np.array([[-1.0, 0.0, 1.0, 5.0]], dtype=np.float32)
    shown = to_display(x)
    assert shown.shape == (1, 4, 3) and shown.dtype == np.uint8
    assert shown[0, :, 0].tolist() == [0, 128, 255, 255]
    noise = to_display(np.array([[[-3.0], [0.0], [3.0]]]), lo=-3, hi=3)
    assert noise[0, :, 1].tolist() == [0, 128, 255]
    rgb = np.zeros((2, 2, 3), np.float32)
    rgb[..., 0] = 1.0
    assert to_display(rgb)[0, 0].tolist() == [255, 128, 128]


def test_plots_build_figures_with_translated_text():
    from matplotlib.figure import Figure

    from diffusion.lessons.noising.figures import NOISING_TEXT, plot_histogram, plot_schedules

    fig = plot_schedules("cosine", 200, 0, text={"xlabel_t": "时间步 t"})
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    assert fig.axes[2].get_xlabel() == "时间步 t"
    image = constant_image(0.5, side=16)
    result = forward_noise(image, "linear", 200, 100, seed=0)
    hist = plot_histogram(result.x_t, result.x0, 100, text={"hist_ylabel": "密度"})
    assert hist.axes[0].get_ylabel() == "密度"
    assert NOISING_TEXT["hist_xlabel"] == "pixel value (scaled to [-1, 1])"
    # Every string is a str.format template with only the documented fields.
    allowed = {"T", "t", "current", "mean", "std"}
    for key, template in NOISING_TEXT.items():
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
        assert fields <= allowed, key
    assert fig.axes[1].get_title() == r"$\sqrt{\bar\alpha_t}$: signal coefficient"
    with pytest.raises(InputError):
        plot_schedules("cosine", 200, 201)


def test_histogram_data_are_densities_of_the_pixels():
    from diffusion.lessons.noising.figures import histogram_data

    rng = np.random.default_rng(0)
    x_t, x0 = rng.standard_normal((32, 32, 3)), np.clip(rng.standard_normal((32, 32, 3)), -1, 1)
    data = histogram_data(x_t, x0)
    edges = np.asarray(data["edges"])
    expected, _ = np.histogram(x_t.ravel(), bins=edges)
    widths = np.diff(edges)
    assert np.allclose(data["noisy"], expected / (expected.sum() * widths))
    assert np.sum(np.asarray(data["clean"]) * widths) == pytest.approx(1.0)
    # A real picture's 256 levels, every one of them, land in the bins the edges say.
    levels = rng.permutation(np.repeat(np.arange(256), 12)).reshape(32, 32, 3) / 127.5 - 1.0
    counts, _ = np.histogram(levels.ravel(), bins=edges)
    got = np.asarray(histogram_data(x_t, levels)["clean"]) * counts.sum() / 12.0  # back to counts
    assert np.array_equal(np.rint(got), counts) and np.allclose(got, counts)
    assert data["mean"] == round(float(x_t.mean()), 2) and data["std"] == round(float(x_t.std()), 2)
    # Bins centred on -1, 0 and 1, where a clean picture's levels pile up.
    centres = (edges[:-1] + edges[1:]) / 2
    assert np.min(np.abs(centres - 1.0)) < 1e-9 and np.min(np.abs(centres)) < 1e-9


@pytest.mark.parametrize("t", [0, 137, 1000])
def test_schedule_picture_for_a_slider_move_matches_a_full_redraw(t):
    """The cached figure redraws only the marker; the picture must be the one a full redraw gives."""
    import io

    from PIL import Image

    from diffusion.lessons.noising.figures import plot_schedules, schedules_png

    text = {"xlabel_t": "时间步 t"}
    schedules_png("cosine", 1000, 500, text)  # the figure is cached at another t first
    full = io.BytesIO()
    plot_schedules("cosine", 1000, t, text).savefig(full, format="png")
    a = np.asarray(Image.open(full).convert("RGB"), dtype=int)
    b = np.asarray(Image.open(io.BytesIO(schedules_png("cosine", 1000, t, text))).convert("RGB"), dtype=int)
    assert a.shape == b.shape
    # Only where the dashed t line crosses the curves is the drawing order different.
    assert (np.abs(a - b).max(axis=-1) > 40).mean() < 0.002
    assert np.abs(a - b).max(axis=-1).mean() < 0.5
    with pytest.raises(InputError):
        schedules_png("cosine", 1000, 1001)
    with pytest.raises(InputError):
        schedules_png("nonsense", 1000, 1)


def test_the_package_exports_the_lessons_math_from_where_it_is_defined():
    import ast
    import importlib
    from pathlib import Path

    sources = {f"diffusion.lessons.noising.{module}": set(names) for module, names in noising._SOURCES.items()}
    assert sorted(noising.__all__) == sorted(n for names in sources.values() for n in names)
    for module, names in sources.items():
        for name in names:
            assert getattr(noising, name) is getattr(importlib.import_module(module), name)
    # The imports type checkers read name the same things as the lazy table.
    tree = ast.parse(Path(noising.__file__).read_text(encoding="utf-8"))
    guarded = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    assert {i.module: {a.name for a in i.names} for i in guarded.body} == sources
    with pytest.raises(AttributeError):
        noising.no_such_name  # noqa: B018


def test_the_histogram_figure_does_not_pull_in_torch():
    """The drawing processes import the figures module; the math (torch) loads only when used."""
    import subprocess
    import sys

    code = ("import sys; from diffusion.lessons.noising import figures; figures.histogram_data([0.5], [0.5]); "
            "print('torch' in sys.modules, end=' '); "
            "from diffusion.lessons import noising; noising.forward_noise; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False True"
