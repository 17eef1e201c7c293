"""Lesson 1 tab: the 1-D heat equation, where the word "diffusion" comes from."""

from __future__ import annotations

import math
from typing import Any

import gradio as gr
import numpy as np

from diffusion.lessons.heat import solver as heat
from diffusion.lessons.heat import figures as heat_plots
from diffusion.serving import render_pool as render_worker
from diffusion.ui.common import (
    LANG_JS,
    LATEX,
    AppSettings,
    LRUCache,
    Translator,
    guarded,
    lang_input,
    plot_picture,
    normalize_lang,
)

DEFAULTS = heat.HeatParams()

# Classroom presets: (name, initial condition, D, L, N, t_end, n_steps, scheme, boundary).
PRESETS: dict[str, dict[str, Any]] = {
    "textbook": dict(initial_condition="spike", diffusivity=0.1, length=100.0, n_points=1000,
                     t_end=50.0, n_steps=5000, scheme="ftcs", boundary="dirichlet"),
    "unstable": dict(initial_condition="spike", diffusivity=1.0, length=100.0, n_points=101,
                     t_end=60.0, n_steps=100, scheme="ftcs", boundary="dirichlet"),
    "cn_same_r": dict(initial_condition="spike", diffusivity=1.0, length=100.0, n_points=101,
                      t_end=60.0, n_steps=100, scheme="crank_nicolson", boundary="dirichlet"),
    "edge": dict(initial_condition="spike", diffusivity=1.0, length=100.0, n_points=101,
                 t_end=50.0, n_steps=100, scheme="ftcs", boundary="dirichlet"),
    "insulated": dict(initial_condition="step", diffusivity=1.0, length=100.0, n_points=201,
                      t_end=500.0, n_steps=5000, scheme="crank_nicolson", boundary="neumann"),
    "ring": dict(initial_condition="gaussian", diffusivity=2.0, length=100.0, n_points=200,
                 t_end=200.0, n_steps=2000, scheme="exact", boundary="periodic"),
}
PRESET_FIELDS = ("initial_condition", "diffusivity", "length", "n_points", "t_end", "n_steps",
                 "scheme", "boundary")

# Plot text: English comes from the plotting module itself, Chinese is written here.
PLOT_ZH = {
    "x_label": "位置 x（长度单位）",
    "t_label": "时间 t（时间单位）",
    "u_label": "温度 u（任意单位）",
    "scheme_ftcs": "FTCS",
    "scheme_crank_nicolson": "Crank–Nicolson",
    "scheme_exact": "精确解（傅里叶级数）",
    "boundary_dirichlet": "狄利克雷",
    "boundary_neumann": "诺伊曼",
    "boundary_periodic": "周期",
    "heatmap_title": "u(x, t)：{scheme}，{boundary}边界",
    "blowup_note": "FTCS 在 t = {t:.3g} 时发散（r = {r:.3g} > 1/2）",
    "heatmap_blowup_note": "FTCS 在 t = {t:.3g} 时发散（r = {r:.3g} > 1/2）\n此后没有数值（灰色）",
    "profile_title": "t = {t:.3g} 时的 u(x, t)",
    "numerical_label": "{scheme}",
    "exact_label": "精确解（傅里叶级数）",
    "initial_label": "初始条件",
    "offscale_note": "初始峰值（{peak:.3g}）超出了坐标范围",
    "unstable_note": "r = {r:.3g} > 1/2：FTCS 不稳定（对称对数坐标）",
    "no_data_note": "没有数值：FTCS 在 t = {t:.3g} 时已发散",
    "error_title": "与精确解的最大误差",
    "error_label": "max |u − u_精确|（任意单位）",
    "error_zero_note": "所有保存时刻的误差都为零：这就是精确解",
    "mass_title_conserved": "总热量 ∫u dx：守恒（{boundary}边界）",
    "mass_title_decaying": "总热量 ∫u dx：会从两端流失（{boundary}边界）",
    "mass_label": "总热量 ∫u dx（任意单位 × 长度）",
    "mass_series": "{scheme}：∫u dx",
    "mass_reference": "t = 0 时的值",
    "kernel_title": "热量尖峰展开成方差为 2Dt 的高斯分布",
    "kernel_time_label": "t = {t:.3g}：方差 2Dt = {var:.3g}",
    "kernel_pde_label": "热方程（实线）",
    "kernel_gauss_label": "高斯密度（虚线）",
    "density_label": "密度（1 / 长度单位）",
}

STRINGS = {
    "en": {
        **{f"heat.plot.{k}": v for k, v in heat_plots.HEAT_TEXT.items()},
        "heat.tab": "1 · Heat equation",
        "heat.intro": (
            "## The heat equation: where *diffusion* comes from\n"
            "Heat spreads from hot to cold. The temperature $u(x, t)$ along a rod obeys\n\n"
            "$$\\frac{\\partial u}{\\partial t} = D\\,\\frac{\\partial^2 u}{\\partial x^2}$$\n\n"
            "On a grid with spacing $\\Delta x$ and time step $\\Delta t$, the explicit FTCS scheme "
            "(forward in time, centred in space) is\n\n"
            "$$u_i^{n+1} = u_i^n + r\\,\\big(u_{i+1}^n - 2u_i^n + u_{i-1}^n\\big), \\qquad r = \\frac{D\\,\\Delta t}{\\Delta x^2}$$\n\n"
            "It is stable only when $r \\le \\tfrac12$. Crank–Nicolson averages the explicit and implicit "
            "updates and stays bounded for every $r$; *exact* sums the Fourier series of the solution."
        ),
        "heat.presets": "Classroom presets",
        "heat.presets_info": "Pick one to fill in the settings and run it.",
        "heat.preset.textbook": "Textbook: spike, FTCS, r ≈ 0.1",
        "heat.preset.unstable": "FTCS blows up: r = 0.6",
        "heat.preset.cn_same_r": "Crank–Nicolson at the same r = 0.6",
        "heat.preset.edge": "On the edge: FTCS at r = 0.5",
        "heat.preset.insulated": "Insulated rod (Neumann): mass is conserved",
        "heat.preset.ring": "A ring (periodic), exact solution",
        "param.initial_condition": "Initial condition",
        "param.custom_expression": "Custom initial condition u(x, 0)",
        "heat.custom_info": "A formula in x, e.g. exp(-(x-50)**2/20) + 0.5*sin(x/5). Allowed: + - * / **, sin cos tan exp log log10 sqrt abs tanh sinh cosh arctan arcsin arccos heaviside minimum maximum, and x, L, pi, e.",
        "param.sine_mode": "Sine mode k",
        "param.seed": "Random seed",
        "param.diffusivity": "Diffusivity D",
        "param.length": "Rod length L",
        "param.n_points": "Grid points N",
        "param.t_end": "End time T",
        "param.n_steps": "Time steps M",
        "param.scheme": "Scheme",
        "param.boundary": "Boundary condition",
        "param.n_frames": "Number of frames",
        "param.frame_index": "Frame index",
        "heat.ic.spike": "Spike (unit value at the middle)",
        "heat.ic.gaussian": "Gaussian bump",
        "heat.ic.step": "Step (hot left half)",
        "heat.ic.sine": "Sine sin(kπx/L)",
        "heat.ic.random": "Random values",
        "heat.ic.custom": "Custom formula",
        "heat.scheme.ftcs": "FTCS (explicit)",
        "heat.scheme.crank_nicolson": "Crank–Nicolson",
        "heat.scheme.exact": "Exact (Fourier series)",
        "heat.bc.dirichlet": "Dirichlet: ends held at 0",
        "heat.bc.neumann": "Neumann: insulated ends",
        "heat.bc.periodic": "Periodic: a ring",
        "heat.run": "Simulate",
        "heat.stability": "Stability",
        "heat.r_stable": "$r = D\\,\\Delta t/\\Delta x^2 = {r:.4g} \\le 1/2$: FTCS is stable.",
        "heat.r_unstable": "$r = D\\,\\Delta t/\\Delta x^2 = {r:.4g} > 1/2$: **FTCS will blow up.** Try Crank–Nicolson, more time steps, or fewer grid points.",
        "heat.r_other": "$r = D\\,\\Delta t/\\Delta x^2 = {r:.4g}$. {scheme} is stable for every $r$.",
        "heat.r_invalid": "Enter valid settings to see $r$.",
        "heat.warn_blowup": "⚠ **FTCS blew up at t = {t:.4g}.** Here $r = {r:.3g} > 1/2$: each step multiplies the fastest-wiggling mode by $|1 - 4r| = {g:.2f} > 1$, so round-off grows exponentially. The run was stopped before the numbers overflowed. Crank–Nicolson stays bounded at the same $r$.",
        "heat.warn_unstable": "⚠ $r = {r:.3g} > 1/2$: FTCS is unstable with these settings. Wiggles grow step by step; with more steps it blows up.",
        "heat.ok": "✓ $r = {r:.3g}$ · max error vs exact {err:.2e} · mass {m0:.4g} → {m1:.4g} · {ms:.0f} ms",
        "heat.heatmap": "Temperature over space and time",
        "heat.profile": "Profile u(x, t)",
        "heat.time": "Time t (drag to scrub; no recomputation)",
        "heat.error": "Error against the exact solution",
        "heat.mass": "Total mass ∫u dx",
        "heat.summary": "Summary (JSON)",
        "heat.bridge": "From heat to diffusion models",
        "heat.bridge_text": (
            "Start the heat equation from a spike on a long rod and it spreads into a **Gaussian** with variance "
            "$2Dt$: the heat kernel\n\n"
            "$$G(x, t) = \\frac{1}{\\sqrt{4\\pi D t}}\\exp\\!\\Big(-\\frac{x^2}{4Dt}\\Big).$$\n\n"
            "So running the heat equation for time $t$ is the same as **blurring** with a Gaussian of "
            "standard deviation $\\sqrt{2Dt}$. A diffusion model's forward process also uses Gaussians, but "
            "instead of blurring it **shrinks the signal and adds Gaussian noise**: "
            "$x_t = \\sqrt{\\bar\\alpha_t}\\,x_0 + \\sqrt{1-\\bar\\alpha_t}\\,\\varepsilon$. "
            "Each pixel does a random walk, and the heat equation describes how the probability of "
            "where it ends up spreads out. The next tab shows this on images."
        ),
        "heat.kernel": "Heat kernel = Gaussian with variance 2Dt",
        "error.expr_empty": "The custom formula is empty. Type a formula in x, e.g. exp(-(x-50)**2/20).",
        "error.expr_too_long": "The custom formula is too long ({length} characters; at most {limit}).",
        "error.expr_syntax": "The custom formula is not valid at column {column} ({detail}). Check brackets and operators; use ** for powers.",
        "error.expr_name": "Unknown name '{name}' in the formula. You can use: {allowed}.",
        "error.expr_function": "Unknown function '{name}'. You can use: {allowed}.",
        "error.expr_arity": "{name}() takes {expected} argument(s), got {got}.",
        "error.expr_not_allowed": "This is not allowed in a formula: {construct}.",
        "error.expr_shape": "The formula must give one value per grid point.",
        "error.expr_too_large": "Initial values must stay within ±{limit}.",
        "error.not_text": "{name} must be text.",
        "error.expr_too_complex": "The formula is too complex or uses too large an exponent.",
        "error.expr_nonfinite": "The formula gives an infinite or undefined value at x = {x:.4g}. Avoid dividing by zero or log of negative numbers.",
        "error.too_much_work": "That is too much work for one request: grid points × time steps = {work:.3g} (at most {limit:.3g}). Use fewer points or fewer time steps.",
    },
    "zh-CN": {
        **{f"heat.plot.{k}": v for k, v in PLOT_ZH.items()},
        "heat.tab": "1 · 热方程",
        "heat.intro": (
            "## 热方程：“扩散”一词的由来\n"
            "热量从高温处流向低温处。一根细杆上的温度 $u(x, t)$ 满足\n\n"
            "$$\\frac{\\partial u}{\\partial t} = D\\,\\frac{\\partial^2 u}{\\partial x^2}$$\n\n"
            "在空间步长为 $\\Delta x$、时间步长为 $\\Delta t$ 的网格上，显式 FTCS 格式（时间向前差分、空间中心差分）为\n\n"
            "$$u_i^{n+1} = u_i^n + r\\,\\big(u_{i+1}^n - 2u_i^n + u_{i-1}^n\\big), \\qquad r = \\frac{D\\,\\Delta t}{\\Delta x^2}$$\n\n"
            "只有当 $r \\le \\tfrac12$ 时它才稳定（稳定性条件）。Crank–Nicolson 格式取显式与隐式更新的平均，"
            "对任意 $r$ 都保持有界；“精确解”则对解的傅里叶级数求和。"
        ),
        "heat.presets": "课堂预设",
        "heat.presets_info": "选择一个预设，自动填好参数并运行。",
        "heat.preset.textbook": "教科书示例：尖峰，FTCS，r ≈ 0.1",
        "heat.preset.unstable": "FTCS 发散：r = 0.6",
        "heat.preset.cn_same_r": "同样 r = 0.6 的 Crank–Nicolson",
        "heat.preset.edge": "临界情形：r = 0.5 的 FTCS",
        "heat.preset.insulated": "绝热杆（诺伊曼边界）：总量守恒",
        "heat.preset.ring": "圆环（周期边界），精确解",
        "param.initial_condition": "初始条件",
        "param.custom_expression": "自定义初始条件 u(x, 0)",
        "heat.custom_info": "关于 x 的公式，例如 exp(-(x-50)**2/20) + 0.5*sin(x/5)。可用：+ - * / **，sin cos tan exp log log10 sqrt abs tanh sinh cosh arctan arcsin arccos heaviside minimum maximum，以及 x、L、pi、e。",
        "param.sine_mode": "正弦模态 k",
        "param.seed": "随机种子",
        "param.diffusivity": "扩散系数 D",
        "param.length": "杆长 L",
        "param.n_points": "网格点数 N",
        "param.t_end": "终止时间 T",
        "param.n_steps": "时间步数 M",
        "param.scheme": "数值格式",
        "param.boundary": "边界条件",
        "param.n_frames": "帧数",
        "param.frame_index": "帧序号",
        "heat.ic.spike": "尖峰（中点取单位值）",
        "heat.ic.gaussian": "高斯凸起",
        "heat.ic.step": "阶跃（左半边热）",
        "heat.ic.sine": "正弦 sin(kπx/L)",
        "heat.ic.random": "随机值",
        "heat.ic.custom": "自定义公式",
        "heat.scheme.ftcs": "FTCS（显式）",
        "heat.scheme.crank_nicolson": "Crank–Nicolson",
        "heat.scheme.exact": "精确解（傅里叶级数）",
        "heat.bc.dirichlet": "狄利克雷：两端保持为 0",
        "heat.bc.neumann": "诺伊曼：两端绝热",
        "heat.bc.periodic": "周期：首尾相接的圆环",
        "heat.run": "开始模拟",
        "heat.stability": "稳定性",
        "heat.r_stable": "$r = D\\,\\Delta t/\\Delta x^2 = {r:.4g} \\le 1/2$：FTCS 稳定。",
        "heat.r_unstable": "$r = D\\,\\Delta t/\\Delta x^2 = {r:.4g} > 1/2$：**FTCS 将会发散。** 可以改用 Crank–Nicolson、增加时间步数或减少网格点数。",
        "heat.r_other": "$r = D\\,\\Delta t/\\Delta x^2 = {r:.4g}$。{scheme} 对任意 $r$ 都稳定。",
        "heat.r_invalid": "请输入有效的参数以查看 $r$。",
        "heat.warn_blowup": "⚠ **FTCS 在 t = {t:.4g} 时发散。** 这里 $r = {r:.3g} > 1/2$：每一步都把振荡最快的模态放大 $|1 - 4r| = {g:.2f} > 1$ 倍，舍入误差因此指数增长。程序在数值溢出前停止了计算。同样的 $r$ 下 Crank–Nicolson 保持有界。",
        "heat.warn_unstable": "⚠ $r = {r:.3g} > 1/2$：在这些参数下 FTCS 不稳定。振荡会一步步增长；步数再多就会发散。",
        "heat.ok": "✓ $r = {r:.3g}$ · 与精确解的最大误差 {err:.2e} · 总量 {m0:.4g} → {m1:.4g} · {ms:.0f} 毫秒",
        "heat.heatmap": "温度随空间和时间的变化",
        "heat.profile": "剖面 u(x, t)",
        "heat.time": "时间 t（拖动即可回看，无需重新计算）",
        "heat.error": "与精确解的误差",
        "heat.mass": "总量 ∫u dx",
        "heat.summary": "结果摘要（JSON）",
        "heat.bridge": "从热方程到扩散模型",
        "heat.bridge_text": (
            "在一根很长的杆上从尖峰出发，热方程的解会展开成方差为 $2Dt$ 的**高斯分布**，即热核\n\n"
            "$$G(x, t) = \\frac{1}{\\sqrt{4\\pi D t}}\\exp\\!\\Big(-\\frac{x^2}{4Dt}\\Big).$$\n\n"
            "因此，让热方程演化时间 $t$，就等于用标准差为 $\\sqrt{2Dt}$ 的高斯核做**模糊**。"
            "扩散模型的前向过程同样使用高斯分布，但它不是模糊，而是**先把信号缩小，再加上高斯噪声**："
            "$x_t = \\sqrt{\\bar\\alpha_t}\\,x_0 + \\sqrt{1-\\bar\\alpha_t}\\,\\varepsilon$。"
            "每个像素都在做随机游走，而热方程描述的正是它最终位置的概率如何扩散开来。下一个标签页会在图像上展示这一点。"
        ),
        "heat.kernel": "热核 = 方差为 2Dt 的高斯分布",
        "error.expr_empty": "自定义公式为空。请输入一个关于 x 的公式，例如 exp(-(x-50)**2/20)。",
        "error.expr_too_long": "自定义公式太长（{length} 个字符，最多 {limit} 个）。",
        "error.expr_syntax": "自定义公式在第 {column} 列无效（{detail}）。请检查括号和运算符；乘方请用 **。",
        "error.expr_name": "公式中有未知的名称“{name}”。可以使用：{allowed}。",
        "error.expr_function": "未知函数“{name}”。可以使用：{allowed}。",
        "error.expr_arity": "{name}() 需要 {expected} 个参数，实际给了 {got} 个。",
        "error.expr_not_allowed": "公式中不允许使用：{construct}。",
        "error.expr_shape": "公式必须在每个网格点上给出一个值。",
        "error.expr_too_large": "初始值必须保持在 ±{limit} 以内。",
        "error.not_text": "{name} 必须是文本。",
        "error.expr_too_complex": "公式过于复杂，或指数过大。",
        "error.expr_nonfinite": "公式在 x = {x:.4g} 处的值为无穷大或无定义。请避免除以零或对负数取对数。",
        "error.too_much_work": "这次请求的计算量太大：网格点数 × 时间步数 = {work:.3g}（上限 {limit:.3g}）。请减少网格点数或时间步数。",
    },
}


# Finished runs with their rendered plots, by (validated settings, language): a few MB at most.
_RUNS = LRUCache(capacity=16)
# Heat-kernel plots by (D, t, L, language).
_KERNELS = LRUCache(capacity=16)


def _plot(figure) -> Any:
    """A figure for a ``gr.Plot``, encoded as the drawing processes encode theirs."""
    return plot_picture(render_worker.png_data_url(figure))


def build(tr: Translator, settings: AppSettings, demo: gr.Blocks) -> None:
    """Build the heat-equation tab and wire its events (it also runs once on page load)."""
    lo, hi = heat.LIMITS["n_points"]
    gr.Markdown(tr("heat.intro"), latex_delimiters=LATEX)
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            preset = gr.Dropdown([(tr(f"heat.preset.{k}"), k) for k in PRESETS], value=None,
                                 label=tr("heat.presets"), info=tr("heat.presets_info"), elem_id="heat-preset")
            ic = gr.Dropdown([(tr(f"heat.ic.{k}"), k) for k in heat.INITIAL_CONDITIONS],
                             value=DEFAULTS.initial_condition, label=tr("param.initial_condition"), elem_id="heat-ic")
            expr = gr.Textbox(DEFAULTS.custom_expression, label=tr("param.custom_expression"),
                              info=tr("heat.custom_info"), visible=False, max_lines=1, elem_id="heat-expr")
            k = gr.Slider(*heat.LIMITS["sine_mode"], value=DEFAULTS.sine_mode, step=1,
                          label=tr("param.sine_mode"), visible=False, elem_id="heat-k")
            seed = gr.Number(DEFAULTS.seed, precision=0, label=tr("param.seed"), visible=False, elem_id="heat-seed")
            d = gr.Number(DEFAULTS.diffusivity, label=tr("param.diffusivity"), elem_id="heat-d")
            length = gr.Number(DEFAULTS.length, label=tr("param.length"), elem_id="heat-length")
            n = gr.Slider(lo, hi, value=DEFAULTS.n_points, step=1, label=tr("param.n_points"), elem_id="heat-n")
            t_end = gr.Number(DEFAULTS.t_end, label=tr("param.t_end"), elem_id="heat-tend")
            m = gr.Slider(*heat.LIMITS["n_steps"], value=DEFAULTS.n_steps, step=1,
                          label=tr("param.n_steps"), elem_id="heat-m")
            scheme = gr.Radio([(tr(f"heat.scheme.{s}"), s) for s in heat.SCHEMES], value=DEFAULTS.scheme,
                              label=tr("param.scheme"), elem_id="heat-scheme")
            bc = gr.Radio([(tr(f"heat.bc.{b}"), b) for b in heat.BOUNDARIES], value=DEFAULTS.boundary,
                          label=tr("param.boundary"), elem_id="heat-bc")
            stability = gr.Markdown(latex_delimiters=LATEX, elem_id="heat-stability")
            run = gr.Button(tr("heat.run"), variant="primary", elem_id="heat-run")
        with gr.Column(scale=2):
            status = gr.Markdown(latex_delimiters=LATEX, elem_id="heat-status")
            heatmap = gr.Plot(label=tr("heat.heatmap"), format="png", show_label=False, elem_id="heat-heatmap")
            profile = gr.Plot(label=tr("heat.profile"), format="png", show_label=False, elem_id="heat-profile")
            time = gr.Slider(0, DEFAULTS.t_end, value=DEFAULTS.t_end, label=tr("heat.time"), elem_id="heat-time")
            with gr.Row():
                error = gr.Plot(label=tr("heat.error"), format="png", show_label=False, elem_id="heat-error")
                mass = gr.Plot(label=tr("heat.mass"), format="png", show_label=False, elem_id="heat-mass")
            summary = gr.JSON(label=tr("heat.summary"), elem_id="heat-summary")
    with gr.Accordion(tr("heat.bridge"), open=False, elem_id="heat-bridge") as bridge:
        gr.Markdown(tr("heat.bridge_text"), latex_delimiters=LATEX)
        kernel = gr.Plot(label=tr("heat.kernel"), format="png", show_label=False, elem_id="heat-kernel")
    lang = lang_input()
    state = gr.State(None)
    bridge_open = gr.State(False)  # the kernel plot is drawn only while someone can see it
    inputs = [ic, expr, d, length, n, t_end, m, scheme, bc, k, seed]

    def render(params: heat.HeatParams, lang: str) -> tuple:
        result = heat.simulate(params)
        text = tr.table("heat.plot.", lang)
        last = _last_finite_frame(result)
        info = result.summary()
        # Drawn to PNG once, in a worker process when there is one (off this process's
        # interpreter lock), so a cached answer is sent again without redrawing.
        pictures = settings.render_pool.run(render_worker.heat_request(params, last, text))
        if pictures is not None:
            plots = tuple(plot_picture(picture) for picture in pictures)
        else:
            figures = render_worker.heat_figures(result, last, text)
            plots = tuple(_plot(f) for f in figures)
        return _status(tr, result, info, lang), plots, result, info, last

    @guarded(tr)
    def simulate(initial_condition, custom_expression, diffusivity, length, n_points, t_end, n_steps,
                 scheme, boundary, sine_mode, seed, lang):
        params = heat.HeatParams(
            initial_condition=initial_condition, custom_expression=custom_expression,
            diffusivity=diffusivity, length=length, n_points=n_points, t_end=t_end, n_steps=n_steps,
            scheme=scheme, boundary=boundary, sine_mode=sine_mode, seed=seed).validated()
        lang = normalize_lang(lang)
        # Same settings, same answer: a class opening the page at once (which runs the
        # defaults) or pressing Run on the same preset is drawn once, not thirty times.
        status, (heat_map, profile_plot, error_plot, mass_plot), result, info, last = \
            _RUNS.get_or_make((params, lang), lambda: render(params, lang))
        return (
            status, heat_map, profile_plot,
            gr.update(minimum=0, maximum=float(result.times[-1]), value=float(result.times[last]),
                      step=float(result.times[1] - result.times[0]) if len(result.times) > 1 else 1),
            error_plot, mass_plot, result, dict(info),
        )

    @guarded(tr)
    def heat_kernel(diffusivity, t_end, length, lang):
        """The heat kernel for these D, t and L (the bridge to lesson 2), drawn on request."""
        params = heat.HeatParams(diffusivity=diffusivity, length=length, t_end=t_end).validated()
        lang = normalize_lang(lang)
        return _KERNELS.get_or_make(
            (params.diffusivity, params.t_end, params.length, lang),
            lambda: _plot(heat_plots.plot_heat_kernel(
                params.diffusivity, params.t_end, params.length, tr.table("heat.plot.", lang))))

    def kernel_if_open(is_open, diffusivity, t_end, length, lang):
        return heat_kernel(diffusivity, t_end, length, lang) if is_open else gr.skip()

    @guarded(tr)
    def scrub(result, t, lang):
        if result is None:
            return gr.skip()
        index = int(np.argmin(np.abs(result.times - float(t))))
        return _plot(heat_plots.plot_profile(result, index, tr.table("heat.plot.", lang)))

    def show_r(d, length, n, t_end, m, scheme, bc, lang):
        try:
            p = heat.HeatParams(diffusivity=d, length=length, n_points=n, t_end=t_end, n_steps=m,
                                scheme=scheme, boundary=bc).validated()
        except (ValueError, TypeError):
            return tr.text("heat.r_invalid", lang)
        _, dx = heat.make_grid(p.length, p.n_points, p.boundary)
        r = p.diffusivity * (p.t_end / p.n_steps) / dx**2
        if p.scheme != "ftcs":
            return tr.text("heat.r_other", lang, r=r, scheme=tr.text(f"heat.scheme.{p.scheme}", lang))
        return tr.text("heat.r_stable" if r <= 0.5 else "heat.r_unstable", lang, r=r)

    def show_ic_fields(ic):
        return (gr.update(visible=ic == "custom"), gr.update(visible=ic == "sine"),
                gr.update(visible=ic == "random"))

    def apply_preset(name):
        if name not in PRESETS:
            return [gr.skip()] * len(PRESET_FIELDS)
        return [PRESETS[name][f] for f in PRESET_FIELDS]

    outputs = [status, heatmap, profile, time, error, mass, state, summary]
    run_event = dict(fn=simulate, inputs=[*inputs, lang], outputs=outputs, js=LANG_JS,
                     concurrency_id="light")
    # The kernel follows a run only while its accordion is open: closed, nobody sees it,
    # and drawing it would add a fifth figure to every run of a busy classroom.
    kernel_inputs = [bridge_open, d, t_end, length, lang]
    kernel_event = dict(fn=kernel_if_open, inputs=kernel_inputs, outputs=kernel, js=LANG_JS,
                        api_visibility="private", concurrency_id="light", show_progress="hidden")
    # .success: after a refused run the kernel would only repeat the same error message.
    run.click(**run_event, api_name="heat_simulate").success(**kernel_event)
    preset.select(apply_preset, preset, [ic, d, length, n, t_end, m, scheme, bc],
                  api_visibility="private", queue=False).then(**run_event, api_visibility="private").success(
                      **kernel_event)
    bridge.expand(lambda: True, None, bridge_open, api_visibility="private", queue=False).then(
        heat_kernel, [d, t_end, length, lang], kernel, js=LANG_JS, api_name="heat_kernel",
        concurrency_id="light", show_progress="hidden")
    bridge.collapse(lambda: False, None, bridge_open, api_visibility="private", queue=False)
    ic.change(show_ic_fields, ic, [expr, k, seed], api_visibility="private", queue=False)
    r_inputs = [d, length, n, t_end, m, scheme, bc, lang]
    gr.on([c.change for c in r_inputs[:-1]], show_r, r_inputs, stability, js=LANG_JS,
          api_visibility="private", queue=False, show_progress="hidden")
    time.input(scrub, [state, time, lang], profile, js=LANG_JS, api_visibility="private",
               concurrency_id="light", trigger_mode="always_last", show_progress="hidden")
    demo.load(**run_event, api_visibility="private")
    demo.load(show_r, r_inputs, stability, js=LANG_JS, api_visibility="private", queue=False)


def _last_finite_frame(result: heat.HeatResult) -> int:
    finite = np.isfinite(result.u).all(axis=1)
    return int(np.flatnonzero(finite)[-1]) if finite.any() else 0


def _status(tr: Translator, result: heat.HeatResult, info: dict, lang: str) -> str:
    if result.blew_up:
        g = abs(1 - 4 * result.r)
        return tr.text("heat.warn_blowup", lang, t=result.blow_up_time or 0.0, r=result.r, g=g)
    if result.params.scheme == "ftcs" and result.r > 0.5:
        return tr.text("heat.warn_unstable", lang, r=result.r)
    err = info["max_abs_error_vs_exact"]
    return tr.text("heat.ok", lang, r=result.r, err=err if math.isfinite(err) else 0.0,
                   m0=info["mass_start"], m1=info["mass_end"], ms=info["runtime_ms"])
