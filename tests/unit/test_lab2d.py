"""The 2-D lab checked against independent references.

References: finite differences of a log mixture density written with scipy; DDPM eq. 11
and DDIM eq. 12 / 16 written out in numpy with ᾱ from ``np.cumprod``; scikit-learn's
``make_moons`` (when installed) and the circles of its definition; scipy's 1-D
Wasserstein distance; brute-force nearest neighbours; Monte Carlo moments of eq. 4.
Trainings are tiny (a few hundred steps of a 32-wide net), so the file runs in seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from diffusion.errors import InputError
from diffusion.lessons import lab2d
from diffusion.lessons.lab2d import exact as exact_module
from diffusion.lessons.lab2d import figures
from diffusion.lessons.lab2d.drawn import BOX

BETA_START, BETA_END = 1e-4, 0.02


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def linear_alpha_bar(big_t: int) -> np.ndarray:
    """ᾱ_t for t = 1..T of DDPM's linear schedule (Ho et al. 2020, section 4), float64."""
    return np.cumprod(1.0 - np.linspace(BETA_START, BETA_END, big_t))


def cosine_alpha_bar(big_t: int) -> np.ndarray:
    """ᾱ_t for t = 1..T of the cosine schedule (Nichol & Dhariwal 2021, eq. 17), β capped at 0.999."""
    f = np.cos((np.arange(big_t + 1) / big_t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.cumprod(1 - np.minimum(1 - f[1:] / f[:-1], 0.999))


REFERENCE_ALPHA_BAR = {"linear": linear_alpha_bar, "cosine": cosine_alpha_bar}


def tiny_run(name: str = "moons", n: int = 200, seed: int = 0, **kw) -> lab2d.Lab2DRun:
    settings = {"hidden": 32, "depth": 2, "batch_size": 64, "learning_rate": 3e-3, "seed": seed,
                "schedule": "linear", **kw}
    return lab2d.new_run(lab2d.make_dataset(name, n, seed), **settings)


@pytest.fixture(scope="module")
def trained() -> lab2d.Lab2DRun:
    run = tiny_run(num_train_timesteps=100)
    lab2d.train(run, 300)
    return run


def log_mixture(x: np.ndarray, centres: np.ndarray, variance: float) -> np.ndarray:
    """log (1/N) Σ_i N(x; c_i, v I) in 2-D, with scipy's logsumexp."""
    d2 = ((x[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    return logsumexp(-d2 / (2 * variance), axis=1) - math.log(len(centres)) - math.log(2 * math.pi * variance)


# --- data -------------------------------------------------------------------------------------

def test_moons_follow_sklearns_definition():
    clean = lab2d.moons_clean(101)
    outer, inner = clean[:50], clean[50:]
    np.testing.assert_allclose(np.hypot(*outer.T), 1.0, atol=1e-12)            # unit circle around (0, 0)
    np.testing.assert_allclose(np.hypot(inner[:, 0] - 1.0, inner[:, 1] - 0.5), 1.0, atol=1e-12)  # around (1, 0.5)
    assert outer[:, 1].min() >= -1e-12 and inner[:, 1].max() <= 0.5 + 1e-12   # upper / lower half circles
    np.testing.assert_allclose(np.arctan2(outer[:, 1], outer[:, 0]), np.linspace(0, math.pi, 50), atol=1e-12)
    sklearn = pytest.importorskip("sklearn.datasets")
    reference, _ = sklearn.make_moons(101, noise=0.0, shuffle=False)
    np.testing.assert_allclose(clean, reference, atol=1e-12)


def test_moons_noise_is_005():
    points = lab2d.make_dataset("moons", 5000, 3).points.astype(np.float64)
    residual = np.minimum(np.abs(np.hypot(*points.T) - 1.0),
                          np.abs(np.hypot(points[:, 0] - 1.0, points[:, 1] - 0.5) - 1.0))
    assert 0.045 < math.sqrt(np.mean(residual**2)) < 0.052   # the radial part of N(0, 0.05² I)


@pytest.mark.parametrize("name", lab2d.BUILTIN_DATASETS)
def test_builtin_sets_are_seeded_and_standardised(name):
    data = lab2d.make_dataset(name, 500, 11)
    assert data.points.shape == (500, 2) and data.points.dtype == np.float32
    np.testing.assert_array_equal(data.points, lab2d.make_dataset(name, 500, 11).points)
    assert not np.array_equal(data.points, lab2d.make_dataset(name, 500, 12).points)
    x = data.standardised.astype(np.float64)
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
    assert abs(x.var(axis=0).mean() - 1.0) < 1e-4
    np.testing.assert_allclose(data.to_data(x), data.points, atol=1e-4)


def test_strokes_map_onto_the_box_with_y_up():
    line = [[[0, 10], [200, 10]]]                       # along the top edge of a 200 × 200 canvas
    points = lab2d.from_strokes(line, 2000, 0, canvas_size=(200, 200))
    assert abs(points[:, 1].mean() - BOX * 0.9) < 0.01   # y = 10 px is near the top: +0.9 BOX
    assert abs(points[:, 0].min() + BOX) < 0.2 and abs(points[:, 0].max() - BOX) < 0.2
    assert 0.03 < points[:, 1].std() < 0.05               # the jitter
    dot_and_line = [[[50, 50]], [[0, 150], [100, 150]]]
    both = lab2d.from_strokes(dot_and_line, 2000, 0, canvas_size=(200, 200))
    near_dot = np.hypot(both[:, 0] + BOX / 2, both[:, 1] - BOX / 2) < 0.2
    assert 0.01 < near_dot.mean() < 0.2                   # the dot gets points, the line most of them


def test_text_points_lie_on_the_glyphs():
    bar = lab2d.from_text("|", 500, 0)
    assert np.abs(bar).max() <= BOX + 1e-6
    assert np.ptp(bar[:, 1]) > 3 * np.ptp(bar[:, 0])        # an upright bar, y up
    assert abs(np.ptp(bar[:, 1]) - 2 * BOX) < 0.05           # its long side spans the box
    dash = lab2d.from_text("-", 500, 0)
    assert np.ptp(dash[:, 0]) > 2 * np.ptp(dash[:, 1])


@pytest.mark.skipif(not lab2d.cjk_text_supported(), reason="no CJK font installed")
def test_chinese_text_works():
    data = lab2d.make_dataset("text", 1000, 0, text="扩散")
    assert data.points.shape == (1000, 2) and np.isfinite(data.points).all()
    assert np.ptp(data.points[:, 0]) > 1.5 * np.ptp(data.points[:, 1])  # two characters side by side


@pytest.mark.parametrize("kwargs, code", [
    ({"name": "nope"}, "bad_choice"),
    ({"n_points": 19}, "out_of_range"),
    ({"n_points": 5001}, "out_of_range"),
    ({"n_points": 100.5}, "not_an_integer"),
    ({"seed": -1}, "out_of_range"),
    ({"name": "text", "text": "a" * 13}, "text_too_long"),
    ({"name": "text", "text": "   "}, "text_empty"),
    ({"name": "text", "text": 5}, "text_not_string"),
    ({"name": "text", "text": "\U0010ffff"}, "text_missing_glyph"),
    ({"name": "drawing"}, "drawing_empty"),
    ({"name": "drawing", "strokes": [[]]}, "drawing_empty"),
    ({"name": "drawing", "strokes": [[[1, 2, 3]]]}, "drawing_bad"),
    ({"name": "drawing", "strokes": [[["a", 2]]]}, "drawing_bad"),
    ({"name": "drawing", "strokes": [[[0, float("nan")]]]}, "drawing_bad"),
    ({"name": "drawing", "strokes": "M 0 0"}, "drawing_bad"),
    ({"name": "drawing", "strokes": [[[0, 0]]] * 300}, "drawing_too_big"),
])
def test_dataset_input_errors(kwargs, code):
    with pytest.raises(InputError) as info:
        lab2d.make_dataset(**{"name": "moons", "n_points": 100, **kwargs})
    assert info.value.code == code and str(info.value)


# --- forward process --------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", lab2d.SCHEDULES)
def test_alpha_bar_table(schedule):
    table = lab2d.alpha_bar_table(schedule, 1000)
    assert table[0] == 1.0 and table.shape == (1001,)
    np.testing.assert_allclose(table[1:], REFERENCE_ALPHA_BAR[schedule](1000), rtol=2e-4, atol=1e-7)


def test_forward_marginal_moments_monte_carlo():
    x0 = torch.tensor([[1.5, -0.7]], dtype=torch.float64).expand(200_000, 2)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    alpha_bar = float(linear_alpha_bar(1000)[299])
    x_t = lab2d.q_sample(x0, alpha_bar, noise).numpy()
    sd = math.sqrt(1 - alpha_bar)
    np.testing.assert_allclose(x_t.mean(axis=0), math.sqrt(alpha_bar) * np.array([1.5, -0.7]),
                               atol=5 * sd / math.sqrt(len(x_t)))
    np.testing.assert_allclose(x_t.var(axis=0), 1 - alpha_bar, rtol=0.02)
    assert abs(np.corrcoef(x_t.T)[0, 1]) < 0.01


def test_forward_points_and_heat_time():
    data = lab2d.make_dataset("gaussians", 300, 0)
    fp = lab2d.forward_points(data, 400, 9, schedule="linear")
    ab = linear_alpha_bar(1000)[399]
    assert math.isclose(fp.alpha_bar, ab, rel_tol=2e-5) and math.isclose(fp.variance, 1 - ab, rel_tol=1e-4)
    np.testing.assert_allclose(fp.x_t, math.sqrt(ab) * fp.x0 + math.sqrt(1 - ab) * fp.noise, atol=1e-5)
    np.testing.assert_array_equal(fp.noise, lab2d.forward_points(data, 10, 9, schedule="cosine").noise)
    np.testing.assert_array_equal(lab2d.forward_points(data, 0, 9).x_t, fp.x0)   # t = 0: the data
    assert lab2d.heat_time(0.3, diffusivity=0.5) == pytest.approx(0.3)  # 2 D s = variance
    with pytest.raises(InputError):
        lab2d.forward_points(data, 1001, 0)


# --- exact score --------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha_bar", [0.999, 0.9, 0.3, 1e-3])
def test_exact_score_is_the_gradient_of_the_log_mixture(alpha_bar):
    rng = np.random.default_rng(1)
    train = rng.normal(size=(40, 2))
    x = rng.normal(size=(25, 2)) * 1.2
    variance, centres = 1 - alpha_bar, math.sqrt(alpha_bar) * train
    h = 1e-4 * math.sqrt(variance)
    numeric = np.stack([(log_mixture(x + h * e, centres, variance) - log_mixture(x - h * e, centres, variance)) / (2 * h)
                        for e in np.eye(2)], axis=1)
    score = lab2d.exact_score(x, train, alpha_bar).numpy()
    np.testing.assert_allclose(score, numeric, rtol=1e-5, atol=1e-6 / math.sqrt(variance))
    np.testing.assert_allclose(lab2d.log_density(x, train, alpha_bar).numpy(), log_mixture(x, centres, variance),
                               rtol=1e-10, atol=1e-10)
    eps = lab2d.exact_eps(x, train, alpha_bar).numpy()
    np.testing.assert_allclose(eps, -math.sqrt(variance) * numeric, rtol=1e-5, atol=1e-6)


def test_exact_score_is_stable_and_chunked(monkeypatch):
    rng = np.random.default_rng(2)
    train, x = rng.normal(size=(300, 2)), rng.normal(size=(97, 2)) * 3
    whole = lab2d.exact_score(x, train, 0.9999).numpy()   # tiny variance: huge logits, no NaN
    assert np.isfinite(whole).all()
    monkeypatch.setattr(exact_module, "CHUNK_ELEMENTS", 1000)  # 3 query points per chunk
    np.testing.assert_allclose(lab2d.exact_score(x, train, 0.9999).numpy(), whole, rtol=1e-12)
    with pytest.raises(ValueError):
        lab2d.exact_score(x, train, 1.0)


def ring_run(count: int = 8) -> lab2d.Lab2DRun:
    angle = 2 * math.pi * np.arange(count) / count
    points = np.stack([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32)
    mean, scale = lab2d.data.standardisation(points)
    data = lab2d.Dataset(name="gaussians", points=points, seed=0, mean=mean, scale=scale)
    return lab2d.new_run(data, hidden=16, depth=1)


@pytest.mark.parametrize("alpha_bar", [0.9999, 0.5, 1e-4])
def test_exact_eps_in_float32_agrees_with_float64(alpha_bar):
    rng = np.random.default_rng(6)
    train, x = rng.normal(size=(500, 2)), rng.normal(size=(200, 2)) * 1.5
    reference = lab2d.exact_eps(x, train, alpha_bar).numpy()
    fast = lab2d.exact_eps(x, train, alpha_bar, dtype=torch.float32)
    assert fast.dtype == torch.float32
    error = np.linalg.norm(fast.double().numpy() - reference, axis=1) / np.linalg.norm(reference, axis=1)
    assert error.max() < 2e-3                                  # the module docstring's bound


@pytest.mark.parametrize("sampler, steps, eta", [("ddim", 50, 0.0), ("ddpm", 100, 0.0), ("ddim", 20, 1.0)])
def test_exact_sampler_returns_training_points(sampler, steps, eta):
    run = ring_run()                                         # 8 points, about one unit apart
    result = lab2d.sample(run, sampler, steps, eta, 200, 3, predictor="exact")
    train = run.dataset.standardised
    assert lab2d.nearest_distance(result.samples_model, train).max() < 1e-4   # copies of training points
    assert (lab2d.nearest_distance(train, result.samples_model) < 1e-4).all()  # and of every one of them
    np.testing.assert_allclose(lab2d.nearest_distance(result.samples, run.dataset.points).max(), 0.0, atol=1e-4)


def test_exact_sampler_memorises_a_real_training_set():
    run = tiny_run("moons", n=200, seed=4)
    result = lab2d.sample(run, "ddpm", 100, 0.0, 400, 1, predictor="exact")
    report = lab2d.memorisation(result.samples, run.dataset.points, reference=run.dataset.fresh(400, 9))
    assert report["median"] < 1e-4 < 0.01 < report["reference_median"]


# --- training -----------------------------------------------------------------------------------

def test_training_reduces_the_loss(trained):
    losses = np.asarray(trained.losses)
    assert losses[:30].mean() > 0.8                         # ε_θ = 0 at the start: loss ≈ 1
    assert losses[-50:].mean() < 0.75 * losses[:30].mean()


def test_training_is_deterministic_and_resumable():
    one = tiny_run(seed=7)
    lab2d.train(one, 50)
    again = tiny_run(seed=7)
    lab2d.train(again, 30)
    summary = lab2d.train(again, 20)
    assert summary.total_steps == 50 and summary.steps_run == 20 and again.step == 50
    for a, b in ((one.model, again.model), (one.ema, again.ema)):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name
    assert one.losses == again.losses
    other = tiny_run(seed=8)
    lab2d.train(other, 50)
    assert not torch.equal(other.model.out.weight, one.model.out.weight)


def test_training_reports_and_stops():
    run = tiny_run()
    seen = []
    summary = lab2d.train(run, 40, callback=lambda step, loss: seen.append((step, loss)), stop=lambda: len(seen) >= 15)
    assert summary.stopped and summary.steps_run == 15 == run.step
    assert [s for s, _ in seen] == list(range(1, 16)) and [v for _, v in seen] == run.losses
    lab2d.train(run, 5)
    assert run.step == 20


@pytest.mark.parametrize("kwargs", [{"hidden": 8}, {"depth": 7}, {"learning_rate": 1.0}, {"batch_size": 8},
                                    {"schedule": "sigmoid"}, {"ema_decay": 1.0}, {"num_train_timesteps": 5}])
def test_run_settings_are_validated(kwargs):
    with pytest.raises(InputError):
        tiny_run(**kwargs)


def test_train_steps_are_validated(trained):
    for steps in (0, 50_001, 2.5, None):
        with pytest.raises(InputError):
            lab2d.train(trained, steps)


# --- samplers -----------------------------------------------------------------------------------

class AffineEps(torch.nn.Module):
    """A stand-in ε-network with a known output: ε(x, τ) = 0.3 x + 0.001 τ."""

    def forward(self, x, tau):
        return 0.3 * x + 0.001 * torch.as_tensor(tau, dtype=x.dtype)


def affine_run(big_t: int, schedule: str = "linear") -> lab2d.Lab2DRun:
    run = tiny_run(num_train_timesteps=big_t, schedule=schedule)
    run.ema = AffineEps()
    return run


def test_ddpm_matches_eq_11_step_by_step():
    big_t, n, seed = 50, 64, 3
    result = lab2d.sample(affine_run(big_t), "ddpm", big_t, 0.0, n, seed)
    ab = np.concatenate([[1.0], linear_alpha_bar(big_t)])
    beta = np.linspace(BETA_START, BETA_END, big_t)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 2), generator=g).double().numpy()
    for t in range(big_t, 0, -1):                              # lessons' t; diffusers' τ = t - 1
        eps = 0.3 * x + 0.001 * (t - 1)
        mean = (x - beta[t - 1] / math.sqrt(1 - ab[t]) * eps) / math.sqrt(1 - beta[t - 1])
        if t > 1:
            sigma = math.sqrt((1 - ab[t - 1]) / (1 - ab[t]) * beta[t - 1])   # σ_t² = β̃_t
            x = mean + sigma * torch.randn((n, 2), generator=g).double().numpy()
        else:
            x = mean
    np.testing.assert_allclose(result.samples_model, x, atol=2e-4)
    assert result.timesteps.tolist() == list(range(big_t - 1, -1, -1))


@pytest.mark.parametrize("schedule", lab2d.SCHEDULES)
def test_ddim_matches_eq_12_and_16(schedule):
    big_t, steps, eta, n, seed = 100, 10, 0.5, 64, 5
    run = affine_run(big_t, schedule)
    infos = []
    result = lab2d.sample(run, "ddim", steps, eta, n, seed, callback=infos.append)
    ab = np.concatenate([[1.0], REFERENCE_ALPHA_BAR[schedule](big_t)])
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 2), generator=g).double().numpy()
    np.testing.assert_allclose(result.noise, x, atol=0)
    for i, tau in enumerate(range(big_t - big_t // steps, -1, -big_t // steps)):   # "leading" spacing
        a_t, a_prev = ab[tau + 1], ab[tau + 1 - big_t // steps] if tau >= big_t // steps else 1.0
        eps = 0.3 * x + 0.001 * tau
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        np.testing.assert_allclose(infos[i].x0_pred.numpy(), x0, atol=2e-4)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)     # eq. 16
        z = torch.randn((n, 2), generator=g).double().numpy()
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma**2) * eps + sigma * z    # eq. 12
    np.testing.assert_allclose(result.samples_model, x, atol=2e-4)


def test_samplers_share_the_starting_noise_and_are_deterministic(trained):
    a = lab2d.sample(trained, "ddpm", 20, 0.0, 100, 11)
    b = lab2d.sample(trained, "ddim", 20, 0.0, 100, 11)
    c = lab2d.sample(trained, "ddim", 20, 0.0, 100, 11, predictor="exact")
    np.testing.assert_array_equal(a.noise, b.noise)
    np.testing.assert_array_equal(a.noise, c.noise)
    np.testing.assert_array_equal(a.noise, lab2d.initial_noise(100, 11).numpy())
    np.testing.assert_array_equal(a.samples, lab2d.sample(trained, "ddpm", 20, 0.0, 100, 11).samples)
    np.testing.assert_allclose(a.samples, trained.dataset.to_data(a.samples_model), atol=1e-5)


def test_sampler_follows_the_run_contract(trained):
    infos = []
    result = lab2d.sample(trained, "ddim", 20, 0.0, 50, 0, callback=infos.append, stop=lambda: len(infos) >= 7)
    assert result.stopped and len(result) == 7 == len(infos)
    assert [i.step for i in infos] == list(range(7)) and all(i.total == 20 for i in infos)
    frame = result.frame(3)
    torch.testing.assert_close(frame.x_t, infos[3].x_t)
    assert frame.t == infos[3].t and infos[0].t == 95 and result.x_t.shape == (7, 50, 2)
    assert result.summary()["steps_run"] == 7


def test_recording_is_bounded():
    assert lab2d.sampling.recorded_count(5000, 1000) == 200
    assert lab2d.sampling.recorded_count(5000, 100) == 1000
    assert lab2d.sampling.recorded_count(30, 100) == 30
    run = tiny_run(num_train_timesteps=100)
    result = lab2d.sample(run, "ddpm", 100, 0.0, 3000, 0)
    assert result.x_t.shape == (100, 1000, 2) and result.samples.shape == (3000, 2)


@pytest.mark.parametrize("kwargs", [{"sampler": "euler"}, {"num_inference_steps": 101}, {"num_inference_steps": 0},
                                    {"eta": 1.5}, {"n_samples": 5001}, {"seed": 2**32}, {"predictor": "oracle"}])
def test_sampler_inputs_are_validated(trained, kwargs):
    with pytest.raises(InputError):
        lab2d.sample(trained, **{"sampler": "ddim", "num_inference_steps": 10, "n_samples": 10, **kwargs})


# --- score field and metrics --------------------------------------------------------------------

def test_score_field(trained):
    field = lab2d.score_field(trained, 40, 9, 2.0)
    assert field.points.shape == (81, 2) and math.isclose(field.weights.sum(), 1.0)
    ab = float(trained.alphas_cumprod[39])
    with torch.inference_mode():
        eps = trained.ema(torch.tensor(field.points, dtype=torch.float32), torch.tensor(39)).double().numpy()
    np.testing.assert_allclose(field.learned, -eps / math.sqrt(1 - ab), rtol=1e-5, atol=1e-6)
    expected = (field.weights * np.linalg.norm(field.learned - field.exact, axis=1)).sum()
    assert field.mean_error == pytest.approx(expected)
    learned, exact, error = field
    assert error == field.mean_error and exact is field.exact
    log_p = log_mixture(field.points, math.sqrt(ab) * trained.dataset.standardised.astype(np.float64), 1 - ab)
    np.testing.assert_allclose(field.weights, np.exp(log_p - logsumexp(log_p)), rtol=1e-8, atol=1e-15)
    for t in (0, 101):
        with pytest.raises(InputError):
            lab2d.score_field(trained, t)
    with pytest.raises(InputError):
        lab2d.score_field(trained, 10, 4)


def test_sliced_wasserstein_against_scipy():
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=37), rng.normal(1.0, 2.0, size=101)
    assert lab2d.wasserstein_1d(u, v) == pytest.approx(stats.wasserstein_distance(u, v), rel=1e-12)
    a, b = rng.normal(size=50), rng.normal(size=50)
    assert lab2d.wasserstein_1d(a, b, 2) == pytest.approx(math.sqrt(np.mean((np.sort(a) - np.sort(b)) ** 2)))
    x, y = rng.normal(size=(200, 2)), rng.normal(size=(300, 2)) + [0.5, 0.0]
    directions = lab2d.metrics.projections(32, 4)
    expected = np.mean([stats.wasserstein_distance(x @ d, y @ d) for d in directions])
    assert lab2d.sliced_wasserstein(x, y, 32, 4) == pytest.approx(expected, rel=1e-10)
    assert lab2d.sliced_wasserstein(x, x, 32, 4) == 0.0
    with pytest.raises(InputError):
        lab2d.sliced_wasserstein(x[:, :1], y)


def test_nearest_distance_and_memorisation():
    rng = np.random.default_rng(3)
    p, q = rng.normal(size=(70, 2)), rng.normal(size=(90, 2))
    brute = np.sqrt(((p[:, None] - q[None]) ** 2).sum(-1)).min(axis=1)
    np.testing.assert_allclose(lab2d.nearest_distance(p, q), brute, rtol=1e-12)
    report = lab2d.memorisation(q[:10], q, reference=p)
    assert report["median"] == 0.0 and report["ratio"] == 0.0


def test_summaries_are_json(trained):
    import json
    data = trained.dataset
    parts = [data.summary(), trained.summary(), lab2d.train(tiny_run(), 3).to_dict(),
             lab2d.sample(trained, "ddim", 5, 0.0, 20, 0).summary(), lab2d.score_field(trained, 10, 5).summary(),
             lab2d.forward_points(data, 10, 0).summary()]
    text = json.dumps(parts, allow_nan=False)
    assert '"steps_run": 5' in text and trained.summary()["step"] == 300


# --- figures ------------------------------------------------------------------------------------

def test_figures_have_labelled_axes(trained):
    data = trained.dataset
    runs = [lab2d.sample(trained, "ddpm", 10, 0.0, 80, 0), lab2d.sample(trained, "ddim", 10, 0.0, 80, 0,
                                                                          predictor="exact")]
    field = lab2d.score_field(trained, 30, 7)
    built = [figures.plot_forward(lab2d.forward_points(data, 50, 0), 3), figures.plot_loss(trained.losses),
             figures.plot_samples(runs, data.points), figures.plot_score_fields(field, data.standardised),
             figures.plot_nearest({"DDPM": lab2d.nearest_distance(runs[0].samples, data.points)},
                                  lab2d.nearest_distance(data.fresh(80, 1), data.points))]
    for fig in built:
        for ax in fig.axes:
            assert ax.get_xlabel() and (ax.get_ylabel() or ax is not fig.axes[0])
            assert ax.get_title()
    translated = figures.plot_loss(trained.losses, text={"loss_title": "训练损失"})
    assert translated.axes[0].get_title() == "训练损失"
