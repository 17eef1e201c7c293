"""Lesson 2 tab: DDPM forward noising of an image, t by t, with the schedule curves."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np

from diffusion import images
from diffusion.lessons.noising import process as noising
from diffusion.lessons.noising import figures as noising_plots
from diffusion.serving import render_pool as render_worker
from diffusion.errors import check_range
from diffusion.examples import list_examples
from diffusion.ui.common import (
    LANG_JS,
    LATEX,
    AppSettings,
    ImageInput,
    LRUCache,
    PictureFiles,
    Translator,
    guarded,
    lang_input,
    plot_picture,
)

DEFAULT_T = 250
STRIP_FRACTIONS = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)

# Plot text: English comes from the plotting module itself, Chinese is written here.
# Literal braces are doubled because every plot string goes through str.format.
# No $math$ here: matplotlib's mathtext cannot fall back to a CJK font, so Chinese
# next to math would turn into empty boxes; Unicode symbols are used instead.
PLOT_ZH = {
    "schedules_title": "噪声调度（T = {T}，当前：{current}，t = {t}）",
    "panel_alpha_bar": "ᾱₜ：信号方差所占比例",
    "panel_sqrt_alpha_bar": "√ᾱₜ：信号系数",
    "panel_sqrt_one_minus_alpha_bar": "√(1 − ᾱₜ)：噪声系数",
    "panel_log_snr": "对数信噪比 = ln(ᾱₜ / (1 − ᾱₜ))",
    "xlabel_t": "时间步 t",
    "ylabel_dimensionless": "（无量纲）",
    "ylabel_log_snr": "对数信噪比（自然对数）",
    "schedule_linear": "线性",
    "schedule_cosine": "余弦",
    "schedule_scaled_linear": "缩放线性",
    "schedule_sigmoid": "Sigmoid",
    "hist_title": "t = {t} 时的像素值",
    "hist_xt": "xₜ 的像素（均值 {mean:.2f}，标准差 {std:.2f}）",
    "hist_x0": "x₀ 的像素（干净图像）",
    "hist_normal": "N(0, 1) 密度",
    "hist_xlabel": "像素值（缩放到 [-1, 1]）",
    "hist_ylabel": "密度",
}

STRINGS = {
    "en": {
        **{f"noising.plot.{k}": v for k, v in noising_plots.NOISING_TEXT.items()},
        "noising.tab": "2 · Forward noising",
        "noising.intro": (
            "## Forward noising: shrink, then add Gaussian noise\n"
            "A diffusion model is trained on images that are destroyed step by step (DDPM, Ho et al. 2020, eq. 2):\n\n"
            "$$q(x_t \\mid x_{t-1}) = \\mathcal{N}\\big(\\sqrt{1-\\beta_t}\\,x_{t-1},\\ \\beta_t I\\big)$$\n\n"
            "Because Gaussians compose, any $t$ can be reached in one jump (eq. 4), with "
            "$\\bar\\alpha_t = \\prod_{s=1}^{t}(1-\\beta_s)$:\n\n"
            "$$x_t = \\sqrt{\\bar\\alpha_t}\\,x_0 + \\sqrt{1-\\bar\\alpha_t}\\,\\varepsilon, \\qquad \\varepsilon \\sim \\mathcal{N}(0, I)$$\n\n"
            "Pixel values are scaled to $[-1, 1]$. As $t \\to T$, $\\bar\\alpha_t \\to 0$ and $x_t$ becomes pure noise "
            "$\\mathcal{N}(0, I)$. The signal-to-noise ratio is $\\mathrm{SNR}(t) = \\bar\\alpha_t / (1-\\bar\\alpha_t)$."
        ),
        "noising.image": "Image x₀",
        "noising.examples": "Examples",
        "param.schedule": "Noise schedule",
        "param.num_train_timesteps": "Number of timesteps T",
        "param.t": "Timestep t",
        "noising.seed": "Seed for the noise ε",
        "noising.schedule.linear": "Linear (DDPM)",
        "noising.schedule.cosine": "Cosine (improved DDPM)",
        "noising.schedule.scaled_linear": "Scaled linear (Stable Diffusion)",
        "noising.schedule.sigmoid": "Sigmoid",
        "noising.closed": "x_t in one jump (eq. 4)",
        "noising.noise": "The noise ε",
        "noising.stepwise": "x_t after t small steps (eq. 2)",
        "noising.why": (
            "**Why do the two $x_t$ images differ?** The one-jump image uses a single noise draw $\\varepsilon$; the "
            "step-by-step image adds $t$ separate small noises. Both are exact samples of the same distribution "
            "$\\mathcal{N}(\\sqrt{\\bar\\alpha_t}x_0, (1-\\bar\\alpha_t)I)$, so their statistics match (see the "
            "summary's mean and std), but not their individual pixels."
        ),
        "noising.strip": "x_t along the way",
        "noising.strip_caption": "t = {t}",
        "noising.schedules": "Schedules compared",
        "noising.histogram": "Pixel values approach N(0, 1)",
        "noising.summary": "Summary (JSON)",
        "noising.run": "Update",
        "noising.gif": "Export as GIF",
        "noising.gif_file": "Animated GIF",
        "noising.resized": "The image was reduced from {w0}×{h0} to {w}×{h} pixels to keep this lesson fast.",
        "error.image_missing": "Please upload an image or pick an example.",
        "error.image_unreadable": "This file could not be read as an image. Please upload a PNG, JPEG, GIF, BMP, TIFF or WebP picture.",
        "error.image_too_large": "This image is too large (at most {limit} pixels). Please upload a smaller picture.",
        "error.image_too_small": "This image is too small ({width}×{height}); it needs at least {minimum} pixels on each side.",
        "error.image_bad_array": "The image data is not a valid picture (empty, wrong shape, or not finite).",
        "error.too_many_steps": "At most {limit} timesteps can be shown at once.",
        "param.checkpoint_every": "Checkpoint interval",
        "param.duration_ms": "Frame duration (ms)",
        "param.max_side": "Longest side",
        "param.mode": "Colour mode",
    },
    "zh-CN": {
        **{f"noising.plot.{k}": v for k, v in PLOT_ZH.items()},
        "noising.tab": "2 · 前向加噪",
        "noising.intro": (
            "## 前向加噪：先缩小，再加高斯噪声\n"
            "扩散模型的训练数据是被一步步破坏的图像（DDPM，Ho 等，2020，式 2）：\n\n"
            "$$q(x_t \\mid x_{t-1}) = \\mathcal{N}\\big(\\sqrt{1-\\beta_t}\\,x_{t-1},\\ \\beta_t I\\big)$$\n\n"
            "由于高斯分布可以相互组合，任意 $t$ 都可以一步到达（式 4），其中 "
            "$\\bar\\alpha_t = \\prod_{s=1}^{t}(1-\\beta_s)$：\n\n"
            "$$x_t = \\sqrt{\\bar\\alpha_t}\\,x_0 + \\sqrt{1-\\bar\\alpha_t}\\,\\varepsilon, \\qquad \\varepsilon \\sim \\mathcal{N}(0, I)$$\n\n"
            "像素值缩放到 $[-1, 1]$。当 $t \\to T$ 时，$\\bar\\alpha_t \\to 0$，$x_t$ 变成纯噪声 $\\mathcal{N}(0, I)$。"
            "信噪比为 $\\mathrm{SNR}(t) = \\bar\\alpha_t / (1-\\bar\\alpha_t)$。"
        ),
        "noising.image": "图像 x₀",
        "noising.examples": "示例",
        "param.schedule": "噪声调度",
        "param.num_train_timesteps": "时间步总数 T",
        "param.t": "时间步 t",
        "noising.seed": "噪声 ε 的随机种子",
        "noising.schedule.linear": "线性（DDPM）",
        "noising.schedule.cosine": "余弦（改进的 DDPM）",
        "noising.schedule.scaled_linear": "缩放线性（Stable Diffusion）",
        "noising.schedule.sigmoid": "Sigmoid",
        "noising.closed": "一步到达的 x_t（式 4）",
        "noising.noise": "噪声 ε",
        "noising.stepwise": "逐步加噪 t 次后的 x_t（式 2）",
        "noising.why": (
            "**为什么两张 $x_t$ 图像不一样？** 一步到达的图像只用了一次噪声采样 $\\varepsilon$；逐步加噪的图像则叠加了 "
            "$t$ 次独立的小噪声。两者都是同一分布 $\\mathcal{N}(\\sqrt{\\bar\\alpha_t}x_0, (1-\\bar\\alpha_t)I)$ 的精确样本，"
            "所以统计量一致（见摘要中的均值和标准差），但每个像素并不相同。"
        ),
        "noising.strip": "加噪过程中的 x_t",
        "noising.strip_caption": "t = {t}",
        "noising.schedules": "各种调度的比较",
        "noising.histogram": "像素值逐渐趋近 N(0, 1)",
        "noising.summary": "结果摘要（JSON）",
        "noising.run": "更新",
        "noising.gif": "导出为 GIF",
        "noising.gif_file": "GIF 动画",
        "noising.resized": "为了保证速度，图像已从 {w0}×{h0} 缩小到 {w}×{h} 像素。",
        "error.image_missing": "请上传一张图像，或选择一个示例。",
        "error.image_unreadable": "无法把这个文件读取为图像。请上传 PNG、JPEG、GIF、BMP、TIFF 或 WebP 图片。",
        "error.image_too_large": "图像太大（上限 {limit} 像素）。请上传小一些的图片。",
        "error.image_too_small": "图像太小（{width}×{height}）；每边至少需要 {minimum} 个像素。",
        "error.image_bad_array": "图像数据无效（为空、形状不对或包含非有限值）。",
        "error.too_many_steps": "一次最多只能显示 {limit} 个时间步。",
        "param.checkpoint_every": "检查点间隔",
        "param.duration_ms": "每帧时长（毫秒）",
        "param.max_side": "最长边",
        "param.mode": "颜色模式",
    },
}


# A class of 30 keeps 30 noise chains (one per student's seed). With a checkpoint every
# 100 steps a chain holds at most 12 states of one ≤256×256 image (≤ 9.5 MB at T = 1000),
# and a slider move costs at most 100 steps (about 50 ms).
CHECKPOINT_EVERY = 100
_IMAGES = LRUCache(capacity=32)
_CHAINS = LRUCache(capacity=32)
# Output pictures, encoded once: the noise and the strip do not change while t moves.
_PICTURES = PictureFiles(capacity=1024)


def _load(path: str | None) -> tuple[str, np.ndarray, dict]:
    path = images.check_upload(path)
    with open(path, "rb") as fh:  # key by content: the same picture re-sent keeps its cache
        key = hashlib.sha1(fh.read()).hexdigest()
    x0, info = _IMAGES.get_or_make(key, lambda: images.load_image(path, max_side=256))
    return key, x0, info


def build(tr: Translator, settings: AppSettings, demo: gr.Blocks) -> None:
    """Build the forward-noising tab and wire its events (it also runs once on page load)."""
    examples = [str(p) for p in list_examples()]
    t_lo, t_hi = noising.LIMITS["num_train_timesteps"]
    gr.Markdown(tr("noising.intro"), latex_delimiters=LATEX)
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            image = ImageInput(value=examples[0] if examples else None, type="filepath", label=tr("noising.image"),
                             sources=["upload", "clipboard"], height=260, elem_id="noise-image")
            gr.Examples(examples=[[p] for p in examples], inputs=[image], label=tr("noising.examples"))
            schedule = gr.Dropdown([(tr(f"noising.schedule.{s}"), s) for s in noising.SCHEDULES], value="linear",
                                   label=tr("param.schedule"), elem_id="noise-schedule")
            steps = gr.Slider(t_lo, t_hi, value=1000, step=10, label=tr("param.num_train_timesteps"),
                              elem_id="noise-T")
            t = gr.Slider(0, 1000, value=DEFAULT_T, step=1, label=tr("param.t"), elem_id="noise-t")
            seed = gr.Number(0, precision=0, label=tr("noising.seed"), elem_id="noise-seed")
            run = gr.Button(tr("noising.run"), variant="primary", elem_id="noise-run")
            gif_btn = gr.Button(tr("noising.gif"), elem_id="noise-gif-btn")
            gif_file = gr.File(label=tr("noising.gif_file"), elem_id="noise-gif")
        with gr.Column(scale=2):
            notice = gr.Markdown(elem_id="noise-notice")
            with gr.Row():
                closed = gr.Image(label=tr("noising.closed"), format="png", height=240, elem_id="noise-xt")
                eps = gr.Image(label=tr("noising.noise"), format="png", height=240, elem_id="noise-eps")
                stepwise = gr.Image(label=tr("noising.stepwise"), format="png", height=240, elem_id="noise-stepwise")
            gr.Markdown(tr("noising.why"), latex_delimiters=LATEX)
            strip = gr.Gallery(label=tr("noising.strip"), columns=len(STRIP_FRACTIONS), height=200,
                               format="png", elem_id="noise-strip")
            with gr.Row():
                curves = gr.Plot(label=tr("noising.schedules"), format="png", show_label=False, elem_id="noise-curves")
                hist = gr.Plot(label=tr("noising.histogram"), format="png", show_label=False, elem_id="noise-hist")
            summary = gr.JSON(label=tr("noising.summary"), elem_id="noise-summary")
    lang = lang_input()

    def compute(image, schedule, num_train_timesteps, t, seed):
        key, x0, info = _load(image)
        sched = noising.get_schedule(schedule, num_train_timesteps)  # validates schedule and T
        T = sched.num_train_timesteps
        seed = check_range("seed", seed, *noising.LIMITS["seed"], integer=True)
        t = check_range("t", t, 0, T, integer=True)
        chain = _CHAINS.get_or_make((key, schedule, T, seed),
                                    lambda: noising.StepwiseChain(x0, sched, seed, checkpoint_every=CHECKPOINT_EVERY))
        return noising.forward_noise(x0, schedule, T, t, seed, chain=chain), (key, info)

    def pictures(result, image, lang):
        key, info = image
        T, schedule, seed = result.num_train_timesteps, result.schedule, result.seed
        run = (key, schedule, T, seed)  # everything the pixels depend on, with the kind of picture and t

        def closed_form(s):  # x_s by eq. 4, as in the strip; the one at t is already computed
            if s == result.t:
                return noising.to_display(result.x_t)
            return noising.to_display(noising.noise_strip(result.x0, schedule, T, seed, [s])[0])

        ts = sorted({round(f * T) for f in STRIP_FRACTIONS})
        name = f"{schedule}_T{T}_seed{seed}"
        gallery = [(_PICTURES.path((*run, "closed", s), lambda s=s: closed_form(s), f"x_t_{name}_t{s}"),
                    tr.text("noising.strip_caption", lang, t=s)) for s in ts]
        (w0, h0), (w, h) = info["original_size"], info["size"]
        note = tr.text("noising.resized", lang, w0=w0, h0=h0, w=w, h=h) if info["resized"] else ""
        return (note, _PICTURES.path((*run, "closed", result.t), lambda: closed_form(result.t),
                                     f"x_t_{name}_t{result.t}"),
                _PICTURES.path((*run, "noise"), lambda: noising.to_display(result.noise, lo=-3.0, hi=3.0),
                               f"noise_{name}"),
                _PICTURES.path((*run, "stepwise", result.t), lambda: noising.to_display(result.x_t_stepwise),
                               f"x_t_stepwise_{name}_t{result.t}"),
                gallery)

    def plots(result, lang):
        text = tr.table("noising.plot.", lang)
        curves = noising_plots.schedules_png(result.schedule, result.num_train_timesteps, result.t, text)
        args = (noising_plots.histogram_data(result.x_t, result.x0), result.t, text)
        # The histogram is drawn in a worker process when one is free, off this process's
        # interpreter lock; when all are busy (drawing heat runs) it is drawn here, sooner.
        (histogram,) = settings.render_pool.run(render_worker.histogram_request(*args), wait=False) or \
            render_worker.histogram_picture(*args)
        return plot_picture(render_worker.data_url(curves)), plot_picture(histogram)

    @guarded(tr)
    def forward(image, schedule, num_train_timesteps, t, seed, lang):
        result, picked = compute(image, schedule, num_train_timesteps, t, seed)
        return (*pictures(result, picked, lang), *plots(result, lang), result.summary())

    # The live path answers a slider move with the images first (tens of ms), then
    # redraws the two plots (a few hundred ms) in a follow-up event.
    @guarded(tr)
    def live_pictures(image, schedule, num_train_timesteps, t, seed, lang):
        if not image:  # the image box was just cleared: wait quietly for a new one
            return [gr.skip()] * 6
        result, picked = compute(image, schedule, num_train_timesteps, t, seed)
        return (*pictures(result, picked, lang), result.summary())

    @guarded(tr)
    def live_plots(image, schedule, num_train_timesteps, t, seed, lang):
        if not image:
            return [gr.skip()] * 2
        return plots(compute(image, schedule, num_train_timesteps, t, seed)[0], lang)

    @guarded(tr)
    def export(image, schedule, num_train_timesteps, seed, lang):
        _, x0, _ = _load(image)
        sched = noising.get_schedule(schedule, num_train_timesteps)
        seed = check_range("seed", seed, *noising.LIMITS["seed"], integer=True)
        out = Path(tempfile.mkdtemp(prefix="dl-gif-")) / f"forward_noising_{schedule}.gif"
        return str(noising.export_gif(x0, schedule, sched.num_train_timesteps, seed, out))

    def rescale_t(num_steps, t):
        num_steps = int(num_steps) if isinstance(num_steps, (int, float)) else 1000
        return gr.update(maximum=num_steps, value=min(int(t), num_steps) if isinstance(t, (int, float)) else 0)

    inputs = [image, schedule, steps, t, seed, lang]
    common = dict(inputs=inputs, js=LANG_JS, concurrency_id="light")
    run.click(forward, outputs=[notice, closed, eps, stepwise, strip, curves, hist, summary], **common,
              api_name="forward_noise")
    live = dict(fn=live_pictures, outputs=[notice, closed, eps, stepwise, strip, summary], **common,
                api_visibility="private")
    follow = dict(fn=live_plots, outputs=[curves, hist], **common, api_visibility="private",
                  show_progress="hidden")
    gr.on([t.input, schedule.change, seed.submit, image.change], **live, trigger_mode="always_last",
          show_progress="minimal").then(**follow)
    steps.input(rescale_t, [steps, t], t, api_visibility="private", queue=False).then(**live).then(**follow)
    gif_btn.click(export, [image, schedule, steps, seed, lang], gif_file, js=LANG_JS,
                  concurrency_id="light", api_name="forward_noise_gif")
    demo.load(**live).then(**follow)
