"""End-to-end: the real app on a free port, every public endpoint called through gradio_client.

Numbers are checked against independent references: r from its definition, the
schedule from diffusers' own DDPMScheduler, mass conservation from the physics.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from diffusers import DDPMScheduler
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from diffusion.examples import list_examples

pytestmark = pytest.mark.e2e

HEAT_DEFAULTS = dict(
    initial_condition="spike", custom_expression="exp(-(x-50)**2/20)", diffusivity=0.1, length=100.0,
    n_points=1000, t_end=50.0, n_steps=5000, scheme="ftcs", boundary="dirichlet", sine_mode=1, seed=0,
    lang="en",
)


def heat(client, **overrides):
    return client.predict(**{**HEAT_DEFAULTS, **overrides}, api_name="/heat_simulate")


def test_every_documented_endpoint_is_exposed(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/heat_simulate", "/heat_kernel", "/forward_noise", "/forward_noise_gif"} <= names


def test_heat_kernel_is_its_own_endpoint_and_checks_its_numbers(client):
    plot = client.predict(0.1, 20.0, 100.0, "zh", api_name="/heat_kernel")
    assert plot["type"] == "matplotlib" and plot["plot"].startswith("data:image/png;base64,")
    with pytest.raises(AppError, match="D"):
        client.predict(-1.0, 20.0, 100.0, "en", api_name="/heat_kernel")
    # A run no longer draws the kernel (it sits in a closed accordion): one figure fewer per run.
    assert len(heat(client)) == 7


def test_heat_textbook_run_reports_r_and_stability(client):
    out = heat(client)
    summary = out[-1]
    dx, dt = 100.0 / 999, 50.0 / 5000
    assert summary["r"] == pytest.approx(0.1 * dt / dx**2, rel=1e-12)
    assert summary["stable"] is True
    # A unit spike on a grid has trapezoid mass dx; Dirichlet ends let heat leak out, never in.
    assert summary["mass_start"] == pytest.approx(dx, rel=1e-9)
    assert 0 < summary["mass_end"] <= summary["mass_start"]
    assert summary["runtime_ms"] > 0
    for key in ("r", "stable", "max_abs_error_vs_exact", "mass_start", "mass_end", "runtime_ms"):
        assert key in summary
    json.dumps(summary, allow_nan=False)


def test_heat_sine_mode_matches_closed_form_decay(client):
    # sin(πx/L) decays as exp(-D (π/L)^2 t): its mass must follow the same factor.
    d, length, t_end = 2.0, 10.0, 1.0
    summary = heat(client, initial_condition="sine", diffusivity=d, length=length, n_points=401, t_end=t_end,
                   n_steps=400, scheme="crank_nicolson")[-1]
    decay = math.exp(-d * (math.pi / length) ** 2 * t_end)
    assert summary["mass_end"] / summary["mass_start"] == pytest.approx(decay, rel=1e-3)
    assert summary["max_abs_error_vs_exact"] < 1e-3


@pytest.mark.parametrize("boundary", ["neumann", "periodic"])
def test_heat_mass_is_conserved_without_leaks(client, boundary):
    summary = heat(client, initial_condition="gaussian", n_points=200, n_steps=2000, boundary=boundary)[-1]
    assert summary["mass_end"] == pytest.approx(summary["mass_start"], rel=1e-10)


def test_heat_unstable_ftcs_is_shown_not_refused(client):
    out = heat(client, diffusivity=1.0, n_points=101, t_end=60.0, n_steps=100)
    summary = out[-1]
    assert summary["r"] == pytest.approx(0.6)
    assert summary["stable"] is False
    assert summary["blew_up"] is True
    assert "blew up" in out[0]
    cn = heat(client, diffusivity=1.0, n_points=101, t_end=60.0, n_steps=100, scheme="crank_nicolson")[-1]
    assert cn["stable"] is True and cn["blew_up"] is False
    assert cn["max_abs_error_vs_exact"] < 1.0


def test_heat_custom_expression(client):
    summary = heat(client, initial_condition="custom", custom_expression="exp(-(x-50)**2/20) + 0.5*sin(x/5)",
                   n_points=201, n_steps=1000)[-1]
    assert summary["stable"] is True


@pytest.mark.parametrize("overrides, fragment", [
    (dict(custom_expression="__import__('os').system('true')", initial_condition="custom"), "formula"),
    (dict(custom_expression="x +* 2", initial_condition="custom"), "formula"),
    (dict(n_points=10**9), "4001"),  # the slider itself reports its bounds
    (dict(diffusivity=-1.0), "Diffusivity"),
    (dict(t_end=1e300), "End time"),
    (dict(scheme="magic"), "crank_nicolson"),  # the radio lists the allowed choices
    (dict(n_steps=100000, n_points=4001), "too much work"),
])
def test_heat_bad_input_gets_a_clear_message(client, overrides, fragment):
    with pytest.raises(AppError) as info:
        heat(client, **overrides)
    assert fragment.lower() in str(info.value).lower()


def test_heat_errors_follow_the_language(client):
    with pytest.raises(AppError) as info:
        heat(client, diffusivity=-1.0, lang="zh-CN")
    assert "扩散系数 D" in str(info.value)


def test_forward_noise_matches_diffusers(client):
    example = str(list_examples()[0])
    out = client.predict(image=handle_file(example), schedule="cosine", num_train_timesteps=1000, t=300, seed=7,
                         lang="en", api_name="/forward_noise")
    summary = out[-1]
    reference = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    alpha_bar = float(reference.alphas_cumprod[299])
    assert summary["alpha_bar"] == pytest.approx(alpha_bar, rel=1e-6)
    assert summary["signal_coef"] == pytest.approx(math.sqrt(alpha_bar), rel=1e-6)
    assert summary["noise_coef"] == pytest.approx(math.sqrt(1 - alpha_bar), rel=1e-6)
    assert summary["snr"] == pytest.approx(alpha_bar / (1 - alpha_bar), rel=1e-5)
    closed = np.asarray(Image.open(out[1]))  # the x_t image comes back as a lossless PNG
    assert closed.ndim == 3 and closed.dtype == np.uint8
    json.dumps(summary, allow_nan=False)


def test_forward_noise_at_T_is_almost_pure_noise(client):
    example = str(list_examples()[0])
    summary = client.predict(image=handle_file(example), schedule="linear", num_train_timesteps=1000, t=1000,
                             seed=0, lang="en", api_name="/forward_noise")[-1]
    assert abs(summary["mean"]) < 0.05
    assert summary["std"] == pytest.approx(1.0, abs=0.05)


def test_forward_noise_is_deterministic(client):
    example = handle_file(str(list_examples()[0]))
    kwargs = dict(schedule="linear", num_train_timesteps=1000, t=500, seed=3, lang="en", api_name="/forward_noise")
    a = client.predict(image=example, **kwargs)
    b = client.predict(image=example, **kwargs)
    assert np.array_equal(np.asarray(Image.open(a[1])), np.asarray(Image.open(b[1])))
    assert np.array_equal(np.asarray(Image.open(a[3])), np.asarray(Image.open(b[3])))


def test_forward_noise_pictures_are_the_cores_pixels_as_t_moves(client):
    """The pictures are kept between slider moves: each must still show exactly what the core computes."""
    from diffusion import images
    from diffusion.lessons import noising

    example = str(list_examples()[0])
    x0, _ = images.load_image(example, max_side=256)
    chain = None
    strips = []
    for t in (400, 37, 400, 1000):  # back and forth, so kept pictures are handed out again
        out = client.predict(image=handle_file(example), schedule="cosine", num_train_timesteps=1000, t=t, seed=11,
                             lang="en", api_name="/forward_noise")
        core = noising.forward_noise(x0, "cosine", 1000, t, 11, chain=chain)
        chain = core.chain
        for picture, expected in ((out[1], core.x_t), (out[3], core.x_t_stepwise)):
            assert np.array_equal(np.asarray(Image.open(picture)), noising.to_display(expected))
        assert np.array_equal(np.asarray(Image.open(out[2])), noising.to_display(core.noise, lo=-3.0, hi=3.0))
        strips.append([np.asarray(Image.open(item["image"])) for item in out[4]])
        assert [item["caption"] for item in out[4]] == [f"t = {s}" for s in (0, 50, 100, 250, 500, 750, 1000)]
    frames = noising.noise_strip(x0, "cosine", 1000, 11, [0, 50, 100, 250, 500, 750, 1000])
    for strip in strips:
        assert all(np.array_equal(a, noising.to_display(b)) for a, b in zip(strip, frames, strict=True))


def test_forward_noise_gif_export(client):
    path = client.predict(image=handle_file(str(list_examples()[0])), schedule="linear", num_train_timesteps=200,
                          seed=0, lang="en", api_name="/forward_noise_gif")
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        assert gif.n_frames > 10


@pytest.mark.parametrize("overrides", [dict(t=5000), dict(t=-1), dict(schedule="nope"),
                                       dict(num_train_timesteps=10**7), dict(seed=-5)])
def test_forward_noise_bad_input(client, overrides):
    kwargs = dict(image=handle_file(str(list_examples()[0])), schedule="linear", num_train_timesteps=1000, t=10,
                  seed=0, lang="en")
    with pytest.raises(AppError):
        client.predict(**{**kwargs, **overrides}, api_name="/forward_noise")


def test_forward_noise_rejects_non_images(client, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_bytes(b"this is not a picture")
    with pytest.raises(AppError) as info:
        client.predict(image=handle_file(str(fake)), schedule="linear", num_train_timesteps=1000, t=10, seed=0,
                       lang="en", api_name="/forward_noise")
    assert "image" in str(info.value).lower()
