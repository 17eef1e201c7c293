"""Unit tests for lesson 1 (the diffusion.lessons.heat package and its figures).

Every numerical check compares against an independent reference: a closed-form
solution, a dense matrix solve, the textbook loop, or a moment identity.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import warnings

import numpy as np
import pytest
from matplotlib.figure import Figure

from diffusion.errors import InputError
from diffusion.lessons.heat import (
    BOUNDARIES, LIMITS, HeatParams, crank_nicolson, exact_solution, ftcs, ftcs_step,
    ftcs_textbook, heat_kernel, make_grid, parse_expression, simulate,
)
from diffusion.lessons.heat.figures import (
    HEAT_TEXT, plot_error, plot_heat_kernel, plot_heatmap, plot_mass, plot_profile,
)


def small(**changes) -> HeatParams:
    base = dict(n_points=101, n_steps=400, t_end=20.0, diffusivity=0.1, length=20.0, n_frames=21)
    return HeatParams(**{**base, **changes})


def unstable_params(**changes) -> HeatParams:
    # r = D dt / dx^2 = 0.1 * 0.25 / 0.2**2 = 0.625 > 1/2
    return small(n_steps=200, t_end=50.0, **changes)


def second_difference_matrix(boundary: str, n: int) -> np.ndarray:
    """Dense matrix A of the second difference, built entry by entry."""
    a = np.zeros((n, n))
    for i in range(n):
        a[i, i] = -2.0
        if i > 0:
            a[i, i - 1] = 1.0
        if i < n - 1:
            a[i, i + 1] = 1.0
    if boundary == "neumann":
        a[0, 1] = a[-1, -2] = 2.0
    if boundary == "periodic":
        a[0, -1] = a[-1, 0] = 1.0
    return a


# ------------------------------------------------------------------ exact solution
@pytest.mark.parametrize("k", [1, 3])
def test_exact_dirichlet_matches_decaying_sine(k):
    length, d, times = 10.0, 0.7, np.array([0.0, 0.5, 2.0])
    x, _ = make_grid(length, 101, "dirichlet")
    u0 = np.sin(k * np.pi * x / length)
    got = exact_solution(u0, x, times, d, length, "dirichlet")
    want = np.sin(k * np.pi * x / length) * np.exp(-d * (k * np.pi / length) ** 2 * times[:, None])
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_exact_neumann_matches_decaying_cosine_and_keeps_constant():
    length, d, times, k = 7.0, 0.3, np.array([0.0, 1.0, 4.0]), 2
    x, _ = make_grid(length, 80, "neumann")
    got = exact_solution(2.0 + np.cos(k * np.pi * x / length), x, times, d, length, "neumann")
    decay = np.exp(-d * (k * np.pi / length) ** 2 * times[:, None])
    want = 2.0 + np.cos(k * np.pi * x / length) * decay
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_exact_periodic_matches_decaying_sine():
    length, d, times, k = 5.0, 0.2, np.array([0.0, 0.3, 3.0]), 3
    x, _ = make_grid(length, 64, "periodic")
    assert x[-1] < length and math.isclose(x[1] - x[0], length / 64)
    got = exact_solution(np.sin(2 * np.pi * k * x / length), x, times, d, length, "periodic")
    decay = np.exp(-d * (2 * np.pi * k / length) ** 2 * times[:, None])
    want = np.sin(2 * np.pi * k * x / length) * decay
    np.testing.assert_allclose(got, want, atol=1e-12)


# ------------------------------------------------------------------ schemes
@pytest.mark.parametrize("r", [0.1, 0.45])
def test_vectorised_ftcs_equals_textbook_loop(r):
    u0 = np.random.default_rng(3).random(40)
    u0[0] = u0[-1] = 0.0
    want = ftcs_textbook(u0, r, 150)
    got = ftcs(u0, r, 150, "dirichlet").frames[-1]
    assert np.max(np.abs(got - want)) <= 1e-12


@pytest.mark.parametrize("boundary, pad_mode", [("neumann", "reflect"), ("periodic", "wrap")])
def test_ftcs_step_uses_ghost_nodes(boundary, pad_mode):
    u = np.random.default_rng(4).random(30)
    padded = np.pad(u, 1, mode=pad_mode)  # reflect gives u[-1] = u[1]
    want = u + 0.3 * (padded[2:] - 2 * u + padded[:-2])
    np.testing.assert_allclose(ftcs_step(u, 0.3, boundary), want, atol=1e-14)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_crank_nicolson_equals_dense_solve(boundary):
    n, r, steps = 16, 2.3, 7
    u0 = np.random.default_rng(5).random(n)
    if boundary == "dirichlet":
        u0[0] = u0[-1] = 0.0
    inner = slice(1, -1) if boundary == "dirichlet" else slice(None)
    size = n - 2 if boundary == "dirichlet" else n
    a = second_difference_matrix(boundary, size)
    left, right = np.eye(size) - r / 2 * a, np.eye(size) + r / 2 * a
    want = u0[inner].copy()
    for _ in range(steps):
        want = np.linalg.solve(left, right @ want)
    got = crank_nicolson(u0, r, steps, boundary).frames[-1]
    np.testing.assert_allclose(got[inner], want, atol=1e-13)


def test_single_mode_follows_discrete_amplification_factors():
    n, length, k, r, steps = 65, 1.0, 3, 0.4, 50
    x, dx = make_grid(length, n, "dirichlet")
    mode = np.sin(k * np.pi * x / length)
    s2 = np.sin(k * np.pi * dx / (2 * length)) ** 2
    g_ftcs, g_cn = 1 - 4 * r * s2, (1 - 2 * r * s2) / (1 + 2 * r * s2)
    np.testing.assert_allclose(ftcs(mode, r, steps).frames[-1], mode * g_ftcs**steps, atol=1e-12)
    np.testing.assert_allclose(crank_nicolson(mode, r, steps).frames[-1], mode * g_cn**steps,
                               atol=1e-12)


def test_ftcs_converges_at_second_order_in_space():
    errors = []
    for n in (21, 41, 81):  # r fixed at 0.2, so dt shrinks like dx^2
        params = small(initial_condition="sine", sine_mode=2, diffusivity=1.0, length=10.0,
                       t_end=5.0, n_points=n, n_steps=(n - 1) ** 2 // 4)
        errors.append(simulate(params).summary()["max_abs_error_vs_exact"])
    assert errors[0] > errors[1] > errors[2]
    assert 3.5 < errors[0] / errors[1] < 4.5 and 3.5 < errors[1] / errors[2] < 4.5


def test_crank_nicolson_converges_at_second_order_in_time():
    errors = [simulate(small(initial_condition="sine", scheme="crank_nicolson", diffusivity=1.0,
                             length=100.0, t_end=1000.0, n_points=201, n_steps=m))
              .summary()["max_abs_error_vs_exact"] for m in (10, 20, 40)]
    assert errors[0] > errors[1] > errors[2]
    order = math.log2(errors[0] / errors[2]) / 2
    assert 1.7 < order < 2.6


@pytest.mark.parametrize("scheme", ["ftcs", "crank_nicolson"])
@pytest.mark.parametrize("boundary", ["neumann", "periodic"])
def test_mass_is_conserved_without_flux(scheme, boundary):
    result = simulate(small(initial_condition="random", seed=7, scheme=scheme, boundary=boundary))
    x, dx = make_grid(20.0, 101, boundary)
    u0 = np.random.default_rng(7).random(101)
    start = np.trapezoid(u0, x) if boundary == "neumann" else u0.sum() * dx
    np.testing.assert_allclose(result.mass, start, rtol=1e-12)


@pytest.mark.parametrize("scheme", ["ftcs", "crank_nicolson", "exact"])
def test_mass_leaks_out_with_dirichlet_ends(scheme):
    result = simulate(small(initial_condition="step", scheme=scheme))
    assert np.all(np.diff(result.mass) < 0)
    assert result.mass[-1] < 0.9 * result.mass[0]


def test_frames_are_evenly_spaced_and_include_both_ends():
    result = simulate(small(n_steps=10, n_frames=50))
    assert len(result.times) == 11 and result.u.shape == (11, 101)
    np.testing.assert_allclose(result.times, np.linspace(0, 20.0, 11))
    assert simulate(small(n_frames=5)).times.tolist() == [0.0, 5.0, 10.0, 15.0, 20.0]


# ------------------------------------------------------------------ stability
def test_unstable_ftcs_blows_up_without_warnings_and_summary_stays_finite():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = simulate(unstable_params())
    assert result.r > 0.5 and not result.stable and result.blew_up
    assert 0 < result.blow_up_time < 50.0
    after = result.times >= result.blow_up_time
    assert np.isnan(result.u[after]).all() and np.isfinite(result.u[~after]).all()
    summary = result.summary()
    json.dumps(summary, allow_nan=False)
    assert summary["blew_up"] is True and summary["stable"] is False
    assert all(math.isfinite(v) for v in summary.values() if isinstance(v, float))


def test_crank_nicolson_stays_bounded_at_the_same_r():
    result = simulate(unstable_params(scheme="crank_nicolson"))
    assert result.r > 0.5 and result.stable and not result.blew_up
    assert np.isfinite(result.u).all() and np.abs(result.u).max() <= 1.0 + 1e-12


def test_huge_r_stops_after_one_step():
    result = simulate(HeatParams(n_points=400, n_steps=1, t_end=1e6, diffusivity=100.0))
    assert result.blew_up and result.blow_up_time == 1e6
    json.dumps(result.summary(), allow_nan=False)


# ------------------------------------------------------------------ heat kernel
@pytest.mark.parametrize("scheme", ["ftcs", "crank_nicolson", "exact"])
def test_spike_variance_grows_as_2dt(scheme):
    params = small(n_points=1001, length=100.0, n_steps=2000, t_end=20.0, scheme=scheme)
    result = simulate(params)
    x = result.x
    center = x[len(x) // 2]
    for u, t in zip(result.u[1:], result.times[1:]):
        variance = np.sum((x - center) ** 2 * u) / np.sum(u)
        assert variance == pytest.approx(2 * 0.1 * t, rel=1e-9)


def test_heat_kernel_is_a_normalised_gaussian_and_matches_the_spike_solution():
    d, t, center = 0.5, 3.0, 4.0
    x = np.linspace(center - 30, center + 30, 6001)
    g = heat_kernel(x, t, d, center)
    dx = x[1] - x[0]
    assert np.sum(g) * dx == pytest.approx(1.0, rel=1e-9)
    assert np.sum((x - center) ** 2 * g) * dx == pytest.approx(2 * d * t, rel=1e-9)
    spike = np.zeros_like(x)
    spike[3000] = 1.0 / dx
    pde = exact_solution(spike, x, np.array([t]), d, 60.0, "dirichlet")[0]
    assert np.max(np.abs(pde - g)) < 1e-6 * g.max()


# ------------------------------------------------------------------ expressions
X = np.linspace(0.0, 100.0, 11)


@pytest.mark.parametrize("text, want", [
    ("exp(-(x-50)**2/20) + 0.5*sin(x/5)", np.exp(-(X - 50) ** 2 / 20) + 0.5 * np.sin(X / 5)),
    ("sqrt(abs(x - L/2)) * tanh(x/L)", np.sqrt(np.abs(X - 50)) * np.tanh(X / 100)),
    ("-x**2 + 2**-1", -X**2 + 0.5),
    ("maximum(x, 30) - minimum(x, 70)", np.maximum(X, 30) - np.minimum(X, 70)),
    ("step(x - 50)", np.heaviside(X - 50, 0.5)),
    ("pi * e + log10(x + 1) + cosh(x/50)", np.pi * np.e + np.log10(X + 1) + np.cosh(X / 50)),
    ("3", np.full_like(X, 3.0)),
])
def test_parser_matches_numpy(text, want):
    np.testing.assert_allclose(parse_expression(text, length=100.0)(X), want, rtol=1e-14)


@pytest.mark.parametrize("text, code", [
    ("__import__('os')", "expr_function"),
    ("open('f')", "expr_function"),
    ("x.real", "expr_not_allowed"),
    ("(lambda: 1)()", "expr_not_allowed"),
    ("9**9**9", "expr_too_complex"),
    ('"a"', "expr_not_allowed"),
    ("x if x else 1", "expr_not_allowed"),
    ("[1]", "expr_not_allowed"),
    ("x[0]", "expr_not_allowed"),
    ("x > 1", "expr_not_allowed"),
    ("x ^ 2", "expr_not_allowed"),
    ("True", "expr_not_allowed"),
    ("2j", "expr_not_allowed"),
    ("sin(x=1)", "expr_not_allowed"),
    ("", "expr_empty"),
    ("   ", "expr_empty"),
    ("x+" * 120 + "x", "expr_too_long"),
    ("+".join(["x"] * 60), "expr_too_complex"),
    ("sin(x", "expr_syntax"),
    ("y + 1", "expr_name"),
    ("sin(x, 2)", "expr_arity"),
    ("maximum(x)", "expr_arity"),
    ("log(x)", "expr_nonfinite"),
    ("1e999", "expr_nonfinite"),
])
def test_parser_rejects(text, code):
    with pytest.raises(InputError) as caught:
        parse_expression(text)(X)
    assert caught.value.code == code
    assert "{" not in str(caught.value)


def test_parser_errors_carry_details():
    with pytest.raises(InputError) as caught:
        parse_expression("x + * 2")
    assert caught.value.params["column"] >= 1
    with pytest.raises(InputError) as caught:
        parse_expression("1/(x - 40)")(X)
    assert caught.value.params["x"] == 40.0
    with pytest.raises(InputError) as caught:
        parse_expression("foo")
    assert caught.value.params["name"] == "foo" and "x" in caught.value.params["allowed"]


# ------------------------------------------------------------------ validation
BAD_NUMBERS = [float("nan"), float("inf"), float("-inf"), -1, 1e30, "1", True, None, np.True_]


@pytest.mark.parametrize("field", sorted(LIMITS))
@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
def test_validation_rejects_bad_numbers(field, value):
    with pytest.raises(InputError) as caught:
        dataclasses.replace(HeatParams(), **{field: value}).validated()
    assert caught.value.code in {"not_a_number", "out_of_range"}


@pytest.mark.parametrize("changes, code", [
    ({"scheme": "euler"}, "bad_choice"),
    ({"boundary": None}, "bad_choice"),
    ({"initial_condition": 3}, "bad_choice"),
    ({"n_points": 100.5}, "not_an_integer"),
    ({"n_points": 4001, "n_steps": 100_000}, "too_much_work"),
    ({"custom_expression": 5}, "not_text"),
    ({"initial_condition": "custom", "custom_expression": "exp(x)"}, "expr_too_large"),
    ({"initial_condition": "custom", "custom_expression": "sqrt(x - 1)"}, "expr_nonfinite"),
])
def test_validation_codes(changes, code):
    with pytest.raises(InputError) as caught:
        dataclasses.replace(HeatParams(), **changes).validated()
    assert caught.value.code == code


def test_validation_normalises_and_ignores_unused_expression():
    checked = HeatParams(n_points=200.0, n_steps=np.int64(10), diffusivity=1, seed=5.0,
                         custom_expression="nonsense(").validated()
    assert type(checked.n_points) is int and type(checked.n_steps) is int
    assert type(checked.seed) is int and type(checked.diffusivity) is float


# ------------------------------------------------------------------ figures
@pytest.fixture(scope="module")
def results():
    return {"normal": simulate(small(initial_condition="gaussian")),
            "blowup": simulate(unstable_params()),
            "exact": simulate(small(scheme="exact", boundary="periodic"))}


@pytest.mark.parametrize("name", ["normal", "blowup", "exact"])
def test_figures_render_with_translated_text(results, name):
    result = results[name]
    text = {key: "» " + value for key, value in HEAT_TEXT.items()}
    figures = [plot_heatmap(result, text), plot_error(result, text), plot_mass(result, text),
               *(plot_profile(result, i, text) for i in (0, len(result.times) - 1))]
    for fig in figures:
        assert isinstance(fig, Figure)
        fig.savefig(io.BytesIO(), format="png")
        assert fig.axes[0].get_title().startswith("» ")
        assert fig.axes[0].get_xlabel() in (text["x_label"], text["t_label"])


def test_heat_kernel_figure_and_frame_index_check(results):
    fig = plot_heat_kernel(0.1, 50.0, 100.0)
    fig.savefig(io.BytesIO(), format="png")
    assert fig.axes[0].get_title() == HEAT_TEXT["kernel_title"]
    with pytest.raises(InputError):
        plot_profile(results["normal"], 10_000)


@pytest.mark.parametrize("limits", [(1e-5, 3e2), (1e-3, 5e-3), (2e-13, 1.0), (0.5, 40.0)])
def test_log_axis_labels_are_matplotlibs_own_in_unicode(limits):
    """Same labelled ticks as matplotlib's mathtext labels, the same text once the markup is read."""
    import re

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.ticker import LogFormatterSciNotation

    from diffusion.figures import unicode_log_labels

    def labels(ours):
        fig = Figure()
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.semilogy([1, 2], list(limits))
        ax.set_ylim(*limits)
        if ours:
            unicode_log_labels(ax.yaxis)
        fig.canvas.draw()
        return [t.get_text() for minor in (False, True) for t in ax.get_yticklabels(minor=minor)]

    def read(mathtext):  # the meaning of matplotlib's markup, written out independently
        body = mathtext.removeprefix("$\\mathdefault{").removesuffix("}$").replace("\\times", "×")
        sup = dict(zip("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))
        return re.sub(r"\^\{([-0-9]+)\}", lambda m: "".join(sup[c] for c in m.group(1)), body)

    theirs, ours = labels(False), labels(True)
    assert isinstance(Figure().add_subplot(yscale="log").yaxis.get_major_formatter(), LogFormatterSciNotation)
    assert [read(s) for s in theirs] == ours
    assert any(ours) and not any("$" in s or "\\" in s for s in ours)


@pytest.mark.parametrize("settings", [
    dict(initial_condition="spike", diffusivity=0.1, length=100.0, n_points=400, t_end=20.0, n_steps=2000),
    dict(initial_condition="step", diffusivity=0.1, length=1000.0, n_points=400, t_end=200.0, n_steps=200,
         scheme="crank_nicolson", boundary="periodic"),  # minor log labels such as 4×10⁻³
    dict(initial_condition="spike", diffusivity=4.0, length=100.0, n_points=400, t_end=20.0, n_steps=2000,
         boundary="neumann"),  # FTCS blows up: symmetric-log profile
])
@pytest.mark.parametrize("lang", ["en", "zh-CN"])
def test_every_label_of_the_heat_figures_is_inside_the_picture(settings, lang):
    from diffusion.serving import render_pool
    from diffusion.ui.i18n import load_locales

    text = {k.removeprefix("heat.plot."): v for k, v in load_locales()[lang].items() if k.startswith("heat.plot.")}
    result = simulate(HeatParams(**settings).validated())
    frame = max(i for i in range(len(result.times)) if np.isfinite(result.u[i]).all())
    for fig in render_pool.heat_figures(result, frame, text):
        fig.canvas.draw()
        box = fig.get_tightbbox(fig.canvas.get_renderer())  # everything drawn, in inches
        width, height = fig.get_size_inches()
        slack = 0.02
        assert box.x0 >= -slack and box.y0 >= -slack and box.x1 <= width + slack and box.y1 <= height + slack, \
            (box.bounds, fig.axes[0].get_title())


# ------------------------------------------------------------------ the package
def test_the_package_is_the_lessons_notebook_api():
    """``from diffusion.lessons import heat`` gives every public name, and no matplotlib or torch with it."""
    import subprocess
    import sys

    from diffusion.lessons import heat

    assert len(heat.__all__) == len(set(heat.__all__))
    assert all(hasattr(heat, name) for name in heat.__all__)
    # r = D dt / dx^2 = 0.1 * (20 / 400) / 0.2^2, from its definition
    assert heat.simulate(heat.HeatParams(**dataclasses.asdict(small()))).r == pytest.approx(0.125)
    code = ("import sys; from diffusion.lessons import heat; "
            "print(sorted(m for m in ('matplotlib', 'torch', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
