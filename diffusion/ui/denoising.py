"""Lesson 4 tab: denoise your own photo with a diffusion model, side by side with the classics."""

from __future__ import annotations

import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
import numpy as np

from diffusion import images
from diffusion.lessons.denoising import classical
from diffusion.lessons.denoising import figures as denoise_plots
from diffusion.models import registry as models
from diffusion.models.denoiser_net import sigma_to_model
from diffusion.lessons.denoising.denoiser import (COLOR_MODES, DEFAULT_COLOR, DIFFUSION_METHODS, METHODS, MethodResult, add_noise,
                                 run_method, score, summary, to_uint8)
from diffusion.errors import InputError, check_choice, check_range
from diffusion.examples import list_examples
from diffusion.ui.common import (LANG_JS, LATEX, AppSettings, ImageInput, Translator, guarded, lang_input,
                                 model_device, progress_html)

log = logging.getLogger("diffusion.ui")

LIMITS = {"sigma": (0, 100), "sigma_override": (0, 100), "seed": (0, 2**32 - 1), "steps": (1, 50),
          "eta": (0.0, 1.0), "max_side": (32, 768), "zoom_x": (0, 100), "zoom_y": (0, 100), "zoom_size": (8, 256)}
DEFAULTS = {"sigma": 25, "seed": 0, "sigma_override": 0, "steps": 10, "eta": 0.0, "color": DEFAULT_COLOR,
            "max_side": 384, "zoom_x": 50, "zoom_y": 50, "zoom_size": 64}
DEFAULT_METHODS = list(METHODS)
CLEAN_LOOKING_SIGMA = 3.0  # estimates below this come from texture and compression, not noise
MAX_DECODE_SIDE = 2048  # an already-noisy upload is decoded up to this size, then cropped
PATH_FRAMES = 5  # multi-step frames shown
RESULTS_BYTES = 400 * 1024 * 1024  # finished comparisons kept for the zoom view

STRINGS = {
    "en": {
        "denoising.tab": "4 · Denoising",
        "denoising.intro": (
            "## Denoising: a diffusion model is a denoiser\n"
            "A diffusion model was trained to remove noise at every level. Given a photo "
            "$y = x_0 + \\sigma\\varepsilon$ we find the timestep $t^*$ whose noise matches, "
            "$\\sqrt{(1-\\bar\\alpha_{t^*})/\\bar\\alpha_{t^*}} = \\sigma$ (pixels scaled to $[-1, 1]$), "
            "and feed the network $x_{t^*} = \\sqrt{\\bar\\alpha_{t^*}}\\,y$.\n\n"
            "**One step** (Tweedie's formula) gives the average of all clean images that could explain the noise:\n\n"
            "$$\\hat x_0 = \\frac{x_{t^*} - \\sqrt{1-\\bar\\alpha_{t^*}}\\,\\epsilon_\\theta(x_{t^*}, t^*)}"
            "{\\sqrt{\\bar\\alpha_{t^*}}} = y - \\sigma\\,\\epsilon_\\theta(x_{t^*}, t^*)$$\n\n"
            "**Multi-step** runs DDIM from $t^*$ back to $t = 0$. The classics: **Gaussian blur**, which is the "
            "heat equation of lesson 1 run for a diffusion time $Dt = s^2/2$ (blur $s$ pixels); **total "
            "variation**; **non-local means**; and **BM3D**, the strongest classic and the slowest."
        ),
        "denoising.image": "Your photo (clean, or already noisy)",
        "denoising.examples": "Examples",
        "param.sigma": "Noise to add, σ (0–255 scale); 0 = my photo is already noisy",
        "denoising.seed": "Seed for the noise",
        "param.sigma_override": "Already noisy: σ to assume (0 = use the estimate)",
        "param.methods": "Methods",
        "param.steps": "Multi-step: DDIM steps",
        "denoising.eta": "Multi-step: η (0 = DDIM, 1 = DDPM-like)",
        "param.color": "Colour: how the one-channel network sees colour",
        "denoising.max_side": "Working size: longest side in pixels",
        "param.zoom_x": "Zoom centre, x (%)",
        "param.zoom_y": "Zoom centre, y (%)",
        "param.zoom_size": "Zoom size (pixels)",
        "denoising.color.opponent": "Brightness + two colour differences (opponent)",
        "denoising.color.rgb": "R, G and B separately",
        "denoising.options": "More options",
        "denoising.run": "Add noise and denoise",
        "denoising.stop": "Stop",
        "denoising.gallery": "Results (click to enlarge)",
        "denoising.table": "Scores",
        "denoising.zoom": "Zoom",
        "denoising.path": "Multi-step: the image at each DDIM step",
        "denoising.summary": "Summary (JSON)",
        "denoising.no_model": ("**The diffusion denoiser is not available** (its model folder is missing or "
                               "damaged). The classical methods still work."),
        "denoising.no_bm3d": "BM3D is not installed on this server (`pip install bm3d`), so it was skipped.",
        "denoising.no_methods": "Choose at least one method.",
        "denoising.method.diffusion_one_step": "Diffusion, one step (Tweedie)",
        "denoising.method.diffusion_multi_step": "Diffusion, multi-step (DDIM)",
        "denoising.method.gaussian_heat": "Gaussian blur = heat equation",
        "denoising.method.total_variation": "Total variation",
        "denoising.method.nl_means": "Non-local means",
        "denoising.method.bm3d": "BM3D (slow)",
        "denoising.clean": "Clean original",
        "denoising.noisy": "Noisy input",
        "denoising.col.method": "Method",
        "denoising.col.psnr": "PSNR (dB)",
        "denoising.col.ssim": "SSIM",
        "denoising.col.seconds": "Time (s)",
        "denoising.col.notes": "Notes",
        "denoising.note.heat": "blur s = {std:.2f} px, diffusion time Dt = {time:.2f} px²",
        "denoising.note.multi": "{steps} steps from t* = {tau:.1f}, η = {eta:g}",
        "denoising.note.one": "t* = {tau:.1f}",
        "denoising.caption_scored": "{name} · {psnr:.2f} dB · SSIM {ssim:.3f} · {seconds:.2f} s",
        "denoising.caption_time": "{name} · {seconds:.2f} s",
        "denoising.path_caption": "t = {tau:.1f} · noise left σ = {sigma:.1f}",
        "denoising.path_caption_end": "t = 0 · result",
        "denoising.adding": "Preparing the noisy image…",
        "denoising.running": "Running {method} ({i} of {n})…",
        "denoising.step": "Step {i} / {n}.",
        "denoising.done": "Done: {n} methods in {seconds:.1f} s.",
        "denoising.stopped": "Stopped.",
        "denoising.levels": ("σ = {sigma:.1f} → in model units σ = 2·{sigma:.1f}/255 = {sigma_model:.4f} → "
                             "ᾱ = 1/(1+σ²) = {alpha_bar:.4f} → t* = {tau:.1f} (of 1000 steps)."),
        "denoising.synthetic": "Added Gaussian noise σ = {sigma:g} with seed {seed}; the estimator would have guessed σ ≈ {estimate:.1f}.",
        "denoising.estimated": "Your photo is treated as already noisy: estimated σ ≈ {estimate:.1f} (wavelet MAD rule).",
        "denoising.override": "Your photo is treated as already noisy: estimated σ ≈ {estimate:.1f}; you chose σ = {sigma:.1f}.",
        "denoising.clean_looking": ("The estimated noise is small (σ ≈ {estimate:.1f}): the photo looks clean. "
                                    "Choose a σ above 0 to add noise."),
        "denoising.clamped": "σ was lowered to {sigma:g}, the highest level the denoiser was trained for.",
        "denoising.resized": "Your {w0}×{h0} image was shrunk to {w}×{h} (working size {max_side}).",
        "denoising.cropped": ("Your {w0}×{h0} image was cropped to its centre, {w}×{h}: shrinking would also "
                              "shrink the noise you want to remove."),
        "denoising.no_truth": "PSNR and SSIM need the clean original, so they are shown only when the noise was added here.",
        "denoising.why": (
            "**Why can multi-step look sharper yet score a lower PSNR?** PSNR measures the mean squared error. "
            "The one-step estimate is the *average* of every clean image that fits the noisy one: the best possible "
            "squared error, but soft where the noise hid the detail. Multi-step DDIM *commits* to one clean image "
            "with crisp texture; where the invented detail differs from the truth, the squared error grows. This is "
            "the perception–distortion trade-off (Blau & Michaeli 2018). Use the zoom to see it."
        ),
        "error.image_missing_denoise": "Please upload a photo or pick an example.",
        "error.no_methods": "Choose at least one method.",
        "error.result_expired": "That result is no longer on the server. Please run the comparison again.",
        **{f"denoising.plot.{k}": v for k, v in denoise_plots.DENOISE_TEXT.items()},
    },
    "zh-CN": {
        "denoising.tab": "4 · 去噪",
        "denoising.intro": (
            "## 去噪：扩散模型就是一个去噪器\n"
            "扩散模型在每个噪声水平上都学过去噪。对一张照片 $y = x_0 + \\sigma\\varepsilon$，先找到噪声相同的时间步 $t^*$，"
            "使 $\\sqrt{(1-\\bar\\alpha_{t^*})/\\bar\\alpha_{t^*}} = \\sigma$（像素缩放到 $[-1, 1]$），"
            "再把 $x_{t^*} = \\sqrt{\\bar\\alpha_{t^*}}\\,y$ 输入网络。\n\n"
            "**一步法**（Tweedie 公式）给出所有可能解释这张噪声图的干净图像的平均：\n\n"
            "$$\\hat x_0 = \\frac{x_{t^*} - \\sqrt{1-\\bar\\alpha_{t^*}}\\,\\epsilon_\\theta(x_{t^*}, t^*)}"
            "{\\sqrt{\\bar\\alpha_{t^*}}} = y - \\sigma\\,\\epsilon_\\theta(x_{t^*}, t^*)$$\n\n"
            "**多步法**用 DDIM 从 $t^*$ 一路回到 $t = 0$。经典方法：**高斯模糊**——也就是第 1 课的热方程，扩散时间 "
            "$Dt = s^2/2$（模糊 $s$ 个像素）；**全变分**；**非局部均值**；以及 **BM3D**，最强也最慢的经典方法。"
        ),
        "denoising.image": "你的照片（干净的，或本身带噪声的）",
        "denoising.examples": "示例",
        "param.sigma": "要添加的噪声 σ（0–255 标度）；0 = 照片本身已有噪声",
        "denoising.seed": "噪声的随机种子",
        "param.sigma_override": "已有噪声时假定的 σ（0 = 使用估计值）",
        "param.methods": "方法",
        "param.steps": "多步法：DDIM 步数",
        "denoising.eta": "多步法：η（0 = DDIM，1 ≈ DDPM）",
        "param.color": "颜色：单通道网络如何处理彩色",
        "denoising.max_side": "处理尺寸：最长边像素数",
        "param.zoom_x": "放大中心 x（%）",
        "param.zoom_y": "放大中心 y（%）",
        "param.zoom_size": "放大区域大小（像素）",
        "denoising.color.opponent": "亮度 + 两个色差（对立色空间）",
        "denoising.color.rgb": "R、G、B 分别处理",
        "denoising.options": "更多选项",
        "denoising.run": "加噪并去噪",
        "denoising.stop": "停止",
        "denoising.gallery": "结果（点击放大）",
        "denoising.table": "得分",
        "denoising.zoom": "局部放大",
        "denoising.path": "多步法：每个 DDIM 步的图像",
        "denoising.summary": "摘要（JSON）",
        "denoising.no_model": "**扩散去噪模型不可用**（模型文件夹缺失或已损坏）。经典方法仍可使用。",
        "denoising.no_bm3d": "服务器未安装 BM3D（`pip install bm3d`），已跳过。",
        "denoising.no_methods": "请至少选择一种方法。",
        "denoising.method.diffusion_one_step": "扩散模型，一步（Tweedie）",
        "denoising.method.diffusion_multi_step": "扩散模型，多步（DDIM）",
        "denoising.method.gaussian_heat": "高斯模糊 = 热方程",
        "denoising.method.total_variation": "全变分",
        "denoising.method.nl_means": "非局部均值",
        "denoising.method.bm3d": "BM3D（较慢）",
        "denoising.clean": "干净原图",
        "denoising.noisy": "带噪输入",
        "denoising.col.method": "方法",
        "denoising.col.psnr": "PSNR（dB）",
        "denoising.col.ssim": "SSIM",
        "denoising.col.seconds": "用时（秒）",
        "denoising.col.notes": "说明",
        "denoising.note.heat": "模糊 s = {std:.2f} 像素，扩散时间 Dt = {time:.2f} 像素²",
        "denoising.note.multi": "从 t* = {tau:.1f} 出发共 {steps} 步，η = {eta:g}",
        "denoising.note.one": "t* = {tau:.1f}",
        "denoising.caption_scored": "{name} · {psnr:.2f} dB · SSIM {ssim:.3f} · {seconds:.2f} 秒",
        "denoising.caption_time": "{name} · {seconds:.2f} 秒",
        "denoising.path_caption": "t = {tau:.1f} · 剩余噪声 σ = {sigma:.1f}",
        "denoising.path_caption_end": "t = 0 · 结果",
        "denoising.adding": "正在准备带噪图像……",
        "denoising.running": "正在运行{method}（第 {i} 个，共 {n} 个）……",
        "denoising.step": "第 {i} / {n} 步。",
        "denoising.done": "完成：{n} 种方法，用时 {seconds:.1f} 秒。",
        "denoising.stopped": "已停止。",
        "denoising.levels": ("σ = {sigma:.1f} → 模型单位 σ = 2·{sigma:.1f}/255 = {sigma_model:.4f} → "
                             "ᾱ = 1/(1+σ²) = {alpha_bar:.4f} → t* = {tau:.1f}（共 1000 步）。"),
        "denoising.synthetic": "已添加 σ = {sigma:g} 的高斯噪声（种子 {seed}）；噪声估计器的估计值为 σ ≈ {estimate:.1f}。",
        "denoising.estimated": "照片被视为本身带噪：估计 σ ≈ {estimate:.1f}（小波中位数绝对偏差法）。",
        "denoising.override": "照片被视为本身带噪：估计 σ ≈ {estimate:.1f}；你选择了 σ = {sigma:.1f}。",
        "denoising.clean_looking": "估计的噪声很小（σ ≈ {estimate:.1f}），照片看起来是干净的。请选择大于 0 的 σ 来添加噪声。",
        "denoising.clamped": "σ 已降到 {sigma:g}，这是去噪模型训练过的最高噪声水平。",
        "denoising.resized": "你的 {w0}×{h0} 图像已缩小到 {w}×{h}（处理尺寸 {max_side}）。",
        "denoising.cropped": "你的 {w0}×{h0} 图像已裁剪为中间的 {w}×{h}：缩小图像也会缩小你想去除的噪声。",
        "denoising.no_truth": "PSNR 和 SSIM 需要干净原图，因此只有在这里添加噪声时才会显示。",
        "denoising.why": (
            "**为什么多步法看起来更清晰，PSNR 却可能更低？** PSNR 衡量的是均方误差。一步法给出的是所有与噪声图相符的"
            "干净图像的*平均*：均方误差最小，但在噪声掩盖细节的地方会发软。多步 DDIM 则*选定*一张纹理清晰的干净图像；"
            "凡是编造的细节与真实不同的地方，均方误差就会变大。这就是感知–失真权衡（Blau 与 Michaeli，2018）。"
            "用局部放大看看。"
        ),
        "error.image_missing_denoise": "请上传一张照片或选择一个示例。",
        "error.no_methods": "请至少选择一种方法。",
        "error.result_expired": "该结果已不在服务器上，请重新运行比较。",
        "denoising.plot.zoom_title": "局部放大：每张图的同一 {size}×{size} 像素区域（不做平滑）",
        "denoising.plot.where": "放大区域的位置",
    },
}


@dataclass
class Prepared:
    """The images a comparison starts from."""

    clean: np.ndarray | None  # uint8 (H, W, C), when the noise is added here
    noisy: np.ndarray  # [0, 1] floats, what every method receives
    sigma: float  # the σ the methods assume (0–255 scale)
    sigma_estimated: float
    notices: list[tuple[str, dict]] = field(default_factory=list)


@dataclass
class Finished:
    """A finished comparison, kept for the zoom view."""

    context: np.ndarray
    panels: list[tuple[str, np.ndarray]]

    @property
    def nbytes(self) -> int:
        return self.context.nbytes + sum(image.nbytes for _, image in self.panels)


class ResultStore:
    """Finished comparisons by random id, least recently used dropped first, bounded in bytes."""

    def __init__(self, max_bytes: int = RESULTS_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, Finished] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, item: Finished) -> str:
        run_id = secrets.token_hex(16)
        with self._lock:
            self._items[run_id] = item
            self._bytes += item.nbytes
            while len(self._items) > 1 and self._bytes > self.max_bytes:
                self._bytes -= self._items.popitem(last=False)[1].nbytes
        return run_id

    def get(self, run_id: Any) -> Finished:
        with self._lock:
            if not isinstance(run_id, str) or run_id not in self._items:
                raise InputError("result_expired", "That result is no longer on the server. Please run the comparison again.")
            self._items.move_to_end(run_id)
            return self._items[run_id]


RESULTS = ResultStore()


def _is_grey(pixels: np.ndarray) -> bool:
    return pixels.shape[2] == 1 or bool(np.all(pixels[:, :, 0] == pixels[:, :, 1])
                                         and np.all(pixels[:, :, 1] == pixels[:, :, 2]))


def load_upload(path: Any, max_side: int, crop: bool) -> tuple[np.ndarray, list[tuple[str, dict]]]:
    """An upload as uint8 ``(H, W, 1|3)`` (grey pictures keep one channel), no side above ``max_side``.

    Args:
        path: The uploaded file's path in the server's cache.
        max_side: Longest side after loading.
        crop: Take the centre instead of shrinking (already-noisy photos: shrinking averages the noise away).

    Returns:
        The pixels and the notices to show (resized or cropped).
    """
    if not path:
        raise InputError("image_missing_denoise", "Please upload a photo or pick an example.")
    pixels, info = images.load_image(images.check_upload(path), max_side=MAX_DECODE_SIDE if crop else max_side)
    clean = np.clip(np.rint((pixels + 1.0) * 127.5), 0, 255).astype(np.uint8)
    if _is_grey(clean):
        clean = clean[:, :, :1]
    notices = []
    (w0, h0) = info["original_size"]
    if crop and max(clean.shape[:2]) > max_side:
        h, w = clean.shape[:2]
        ch, cw = min(h, max_side), min(w, max_side)
        top, left = (h - ch) // 2, (w - cw) // 2
        clean = clean[top:top + ch, left:left + cw]
        notices.append(("denoising.cropped", {"w0": w0, "h0": h0, "w": cw, "h": ch}))
    elif info["resized"]:
        w, h = info["size"]
        notices.append(("denoising.resized", {"w0": w0, "h0": h0, "w": w, "h": h, "max_side": max_side}))
    return clean, notices


def prepare(path: Any, sigma: Any, seed: Any, sigma_override: Any, max_side: Any) -> Prepared:
    """Validate the inputs, load the upload and make the noisy image every method receives."""
    sigma = check_range("sigma", sigma, *LIMITS["sigma"])
    seed = check_range("seed", seed, *LIMITS["seed"], integer=True)
    sigma_override = check_range("sigma_override", sigma_override or 0, *LIMITS["sigma_override"])
    max_side = check_range("max_side", max_side, *LIMITS["max_side"], integer=True)
    synthetic = sigma > 0
    pixels, notices = load_upload(path, max_side, crop=not synthetic)
    if synthetic:
        noisy = add_noise(pixels, sigma, seed, quantise=True)
        estimate = classical.estimate_noise(noisy)
        notices.insert(0, ("denoising.synthetic", {"sigma": sigma, "seed": seed, "estimate": estimate}))
        return Prepared(pixels, noisy, sigma, estimate, notices)
    noisy = pixels.astype(np.float64) / 255.0
    estimate = classical.estimate_noise(noisy)
    used = sigma_override if sigma_override > 0 else estimate
    if used > LIMITS["sigma"][1]:
        used = float(LIMITS["sigma"][1])
        notices.append(("denoising.clamped", {"sigma": used}))
    if sigma_override > 0:
        notices.insert(0, ("denoising.override", {"estimate": estimate, "sigma": used}))
    else:
        notices.insert(0, ("denoising.estimated", {"estimate": estimate}))
        if estimate < CLEAN_LOOKING_SIGMA:
            notices.append(("denoising.clean_looking", {"estimate": estimate}))
    notices.append(("denoising.no_truth", {}))
    return Prepared(None, noisy, used, estimate, notices)


def check_methods(methods: Any) -> list[str]:
    """The chosen methods in the lesson's order; unknown names are refused."""
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, (list, tuple)) or len(methods) > len(METHODS):
        raise InputError("bad_choice", "{name} must be one of: {choices} (got {value}).", name="methods",
                         choices=", ".join(METHODS), value=str(methods)[:40])
    for method in methods:
        check_choice("methods", method, METHODS)
    if not methods:
        raise InputError("no_methods", "Choose at least one method.")
    return [m for m in METHODS if m in methods]


def check_zoom(zoom_x: Any, zoom_y: Any, zoom_size: Any) -> tuple[float, float, int]:
    """The zoom centre (percent of width and height) and crop side, validated."""
    return (check_range("zoom_x", zoom_x, *LIMITS["zoom_x"]), check_range("zoom_y", zoom_y, *LIMITS["zoom_y"]),
            int(check_range("zoom_size", zoom_size, *LIMITS["zoom_size"], integer=True)))


def noise_levels_text(tr: Translator, lang: str, sigma: float, denoiser) -> str:
    """The σ → ᾱ → t* chain as numbers, computed by the same code the denoiser runs."""
    sigma_model = float(sigma_to_model(sigma))
    return tr.text("denoising.levels", lang, sigma=sigma, sigma_model=sigma_model,
                   alpha_bar=1.0 / (1.0 + sigma_model**2), tau=float(denoiser.levels.tau(sigma_model)) + 1.0)


def method_note(tr: Translator, lang: str, result: MethodResult) -> str:
    d = result.details or {}
    if result.name == "gaussian_heat":
        return tr.text("denoising.note.heat", lang, std=d["blur_std_px"], time=d["diffusion_time_px2"])
    if result.name == "diffusion_multi_step":
        return tr.text("denoising.note.multi", lang, steps=d["steps"], tau=d["t_star"], eta=d["eta"])
    if result.name == "diffusion_one_step":
        return tr.text("denoising.note.one", lang, tau=d["t_star"])
    return ""


def caption(tr: Translator, lang: str, result: MethodResult) -> str:
    name = tr.text(f"denoising.method.{result.name}", lang)
    if result.psnr is None:
        return tr.text("denoising.caption_time", lang, name=name, seconds=result.seconds)
    return tr.text("denoising.caption_scored", lang, name=name, psnr=result.psnr, ssim=result.ssim,
                   seconds=result.seconds)


def path_items(tr: Translator, lang: str, result: MethodResult) -> list[tuple[np.ndarray, str]]:
    """A few frames of the multi-step run, first (the noisy start) and last (the result) included."""
    run = result.run
    if run is None:
        return []
    picks = sorted(set(np.linspace(0, len(run.frames) - 1, min(PATH_FRAMES, len(run.frames))).round().astype(int)))
    items = []
    for i in picks:
        if i == len(run.frames) - 1:
            text = tr.text("denoising.path_caption_end", lang)
        else:  # the lesson's t = diffusers' τ + 1 (t = 0 is the clean image)
            text = tr.text("denoising.path_caption", lang, tau=run.taus[i] + 1.0, sigma=run.sigmas_255[i])
        items.append((_display(to_uint8(run.frames[i])), text))
    return items


def _display(image: np.ndarray) -> np.ndarray:
    return image[:, :, 0] if image.shape[2] == 1 else image


def _table(tr: Translator, lang: str, noisy: MethodResult, results: list[MethodResult]) -> dict:
    headers = [tr.text(f"denoising.col.{c}", lang) for c in ("method", "psnr", "ssim", "seconds", "notes")]
    rows = [[tr.text("denoising.noisy", lang), _fmt(noisy.psnr, 2), _fmt(noisy.ssim, 3), "", ""]]
    for r in results:
        rows.append([tr.text(f"denoising.method.{r.name}", lang), _fmt(r.psnr, 2), _fmt(r.ssim, 3),
                     f"{r.seconds:.2f}", method_note(tr, lang, r)])
    return {"headers": headers, "data": rows}


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


class Stopped(Exception):
    """Raised inside a method's worker thread when the user pressed Stop."""


def in_worker(work: Callable[[Callable[[int, int], None]], Any], interval: float = 0.25) -> Generator:
    """Run ``work(on_step)`` in a thread; yield its latest ``(i, n)`` progress every ``interval`` s.

    Returns (through ``yield from``) what ``work`` returned, or raises what it raised. If
    the consumer stops iterating (Stop pressed, the event cancelled), the next ``on_step``
    call raises :class:`Stopped`, so the thread ends after its current step.
    """
    state: dict[str, Any] = {"progress": None}
    done, stop = threading.Event(), threading.Event()

    def on_step(i: int, n: int) -> None:
        state["progress"] = (i, n)
        if stop.is_set():
            raise Stopped

    def main() -> None:
        try:
            state["result"] = work(on_step)
        except BaseException as error:  # noqa: BLE001 - handed back to the streaming thread
            state["error"] = error
        finally:
            done.set()

    threading.Thread(target=main, daemon=True, name="denoise-method").start()
    try:
        while not done.wait(interval):
            yield state["progress"]
    finally:
        stop.set()
    if "error" in state:
        raise state["error"]
    return state["result"]


def build(tr: Translator, settings: AppSettings, demo: gr.Blocks) -> None:
    """Build the denoising tab and wire its events."""
    examples = [str(p) for p in list_examples(noisy=True) if p.name != "digit.png"]
    device = model_device(settings)
    heavy = dict(concurrency_id="heavy", concurrency_limit=settings.heavy_concurrency)
    gr.Markdown(tr("denoising.intro"), latex_delimiters=LATEX)
    if not models.denoiser_available():
        log.warning("lesson 4: no usable denoiser at %s; classical methods only", models.DENOISER_PATH)
        gr.Markdown(tr("denoising.no_model"), elem_classes=["dl-warning"], elem_id="denoise-no-model")
    method_choices = [(tr(f"denoising.method.{m}"), m) for m in METHODS]
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            image = ImageInput(value=examples[0] if examples else None, type="filepath", label=tr("denoising.image"),
                               sources=["upload", "clipboard"], height=240, elem_id="denoise-image")
            gr.Examples(examples=[[p] for p in examples], inputs=[image], label=tr("denoising.examples"))
            sigma = gr.Slider(*LIMITS["sigma"], value=DEFAULTS["sigma"], step=1, label=tr("param.sigma"),
                              elem_id="denoise-sigma")
            seed = gr.Number(DEFAULTS["seed"], precision=0, label=tr("denoising.seed"), elem_id="denoise-seed")
            methods = gr.CheckboxGroup(method_choices, value=DEFAULT_METHODS, label=tr("param.methods"),
                                       elem_id="denoise-methods")
            with gr.Accordion(tr("denoising.options"), open=False, elem_id="denoise-options"):
                sigma_override = gr.Slider(*LIMITS["sigma_override"], value=DEFAULTS["sigma_override"], step=0.5,
                                           label=tr("param.sigma_override"), elem_id="denoise-sigma-override")
                steps = gr.Slider(*LIMITS["steps"], value=DEFAULTS["steps"], step=1, label=tr("param.steps"),
                                  elem_id="denoise-steps")
                eta = gr.Slider(*LIMITS["eta"], value=DEFAULTS["eta"], step=0.05, label=tr("denoising.eta"),
                                elem_id="denoise-eta")
                color = gr.Dropdown([(tr(f"denoising.color.{c}"), c) for c in COLOR_MODES], value=DEFAULTS["color"],
                                    label=tr("param.color"), elem_id="denoise-color")
                max_side = gr.Slider(*LIMITS["max_side"], value=DEFAULTS["max_side"], step=16,
                                     label=tr("denoising.max_side"), elem_id="denoise-max-side")
            with gr.Row():
                run = gr.Button(tr("denoising.run"), variant="primary", elem_id="denoise-run")
                stop = gr.Button(tr("denoising.stop"), variant="stop", elem_id="denoise-stop")
        with gr.Column(scale=3):
            status = gr.HTML(elem_id="denoise-status")
            notice = gr.Markdown(elem_id="denoise-notice")
            gallery = gr.Gallery(label=tr("denoising.gallery"), columns=4, height=420, format="png",
                                 object_fit="contain", elem_id="denoise-gallery")
            table = gr.Dataframe(headers=[tr.text(f"denoising.col.{c}", "en")
                                          for c in ("method", "psnr", "ssim", "seconds", "notes")],
                                 label=tr("denoising.table"), interactive=False, wrap=True, elem_id="denoise-table")
            with gr.Accordion(tr("denoising.zoom"), open=True, elem_id="denoise-zoom-box"):
                with gr.Row():
                    zoom_x = gr.Slider(*LIMITS["zoom_x"], value=DEFAULTS["zoom_x"], step=1, label=tr("param.zoom_x"),
                                       elem_id="denoise-zoom-x")
                    zoom_y = gr.Slider(*LIMITS["zoom_y"], value=DEFAULTS["zoom_y"], step=1, label=tr("param.zoom_y"),
                                       elem_id="denoise-zoom-y")
                    zoom_size = gr.Slider(*LIMITS["zoom_size"], value=DEFAULTS["zoom_size"], step=8,
                                          label=tr("param.zoom_size"), elem_id="denoise-zoom-size")
                zoom = gr.Plot(label=tr("denoising.zoom"), format="png", show_label=False, elem_id="denoise-zoom")
            path = gr.Gallery(label=tr("denoising.path"), columns=PATH_FRAMES, height=220, format="png",
                              object_fit="contain", elem_id="denoise-path")
            gr.Markdown(tr("denoising.why"), latex_delimiters=LATEX)
            summary_json = gr.JSON(label=tr("denoising.summary"), elem_id="denoise-summary")
    run_id = gr.Textbox(visible=False, max_length=64, elem_id="denoise-run-id")
    lang = lang_input()

    def zoom_plot(finished: Finished, zoom: tuple[float, float, int], lang):
        zx, zy, size = zoom
        return denoise_plots.zoom_figure(finished.context, finished.panels, (zx / 100, zy / 100), size,
                                         tr.table("denoising.plot.", lang))

    @guarded(tr)
    def denoise(image, sigma, seed, methods, sigma_override, steps, eta, color, max_side, zoom_x, zoom_y,
                zoom_size, lang):
        chosen = check_methods(methods)
        steps = check_range("steps", steps, *LIMITS["steps"], integer=True)
        eta = check_range("eta", eta, *LIMITS["eta"])
        color = check_choice("color", color, COLOR_MODES)
        zoom = check_zoom(zoom_x, zoom_y, zoom_size)
        prepared = prepare(image, sigma, seed, sigma_override, max_side)
        notices = list(prepared.notices)
        denoiser = None
        if any(m in DIFFUSION_METHODS for m in chosen):
            try:
                denoiser = models.load_denoiser(device)
            except models.ModelUnavailable:
                chosen = [m for m in chosen if m not in DIFFUSION_METHODS]
                if not chosen:  # only the model was asked for: say why nothing can be done
                    raise
                notices.append(("denoising.no_model", {}))
        if "bm3d" in chosen and not classical.bm3d_available():
            chosen.remove("bm3d")
            notices.append(("denoising.no_bm3d", {}))
        if denoiser is not None:
            notices.insert(1, ("denoising.levels", {}))
        if not chosen:
            raise InputError("no_methods", "Choose at least one method.")

        def notice_text():
            lines = []
            for key, fields in notices:
                if key == "denoising.levels":
                    lines.append(noise_levels_text(tr, lang, prepared.sigma, denoiser))
                else:
                    lines.append(tr.text(key, lang, **fields))
            return "\n\n".join(lines)

        noisy_u8 = to_uint8(prepared.noisy)
        noisy = MethodResult("noisy", noisy_u8, 0.0, 0.0)
        if prepared.clean is not None:
            noisy.psnr, noisy.ssim = score(noisy_u8, prepared.clean)
        gallery_items = []
        if prepared.clean is not None:
            gallery_items.append((_display(prepared.clean), tr.text("denoising.clean", lang)))
        noisy_caption = tr.text("denoising.noisy", lang)
        if noisy.psnr is not None:
            noisy_caption += f" · {noisy.psnr:.2f} dB · SSIM {noisy.ssim:.3f}"
        gallery_items.append((_display(noisy_u8), noisy_caption))
        results: list[MethodResult] = []
        skip = gr.skip()
        yield (progress_html(0.0, tr.text("denoising.adding", lang)), notice_text(), gallery_items,
               _table(tr, lang, noisy, results), skip, [], skip, "")
        for i, method in enumerate(chosen):
            text = tr.text("denoising.running", lang, method=tr.text(f"denoising.method.{method}", lang),
                           i=i + 1, n=len(chosen))
            yield (progress_html(i / len(chosen), text), skip, skip, skip, skip, skip, skip, skip)

            def work(on_step, method=method):
                return run_method(method, prepared.noisy, prepared.sigma, clean=prepared.clean,
                                  denoiser=denoiser, steps=steps, eta=eta, seed=seed, color=color, on_step=on_step)

            runner = in_worker(work)
            try:
                while True:
                    try:
                        progress = next(runner)
                    except StopIteration as finished:
                        result = finished.value
                        break
                    if progress is not None:  # the multi-step method reports its steps
                        step_text = text + " " + tr.text("denoising.step", lang, i=progress[0], n=progress[1])
                        fraction = (i + progress[0] / progress[1]) / len(chosen)
                        yield (progress_html(fraction, step_text), skip, skip, skip, skip, skip, skip, skip)
            finally:
                runner.close()  # cancelled: the worker stops after its current step
            results.append(result)
            gallery_items.append((_display(result.image), caption(tr, lang, result)))
            yield (skip, skip, gallery_items, _table(tr, lang, noisy, results), skip, skip, skip, skip)
        context = prepared.clean if prepared.clean is not None else noisy_u8
        panels = ([(tr.text("denoising.clean", lang), prepared.clean)] if prepared.clean is not None else [])
        panels += [(tr.text("denoising.noisy", lang), noisy_u8)]
        panels += [(tr.text(f"denoising.method.{r.name}", lang), r.image) for r in results]
        finished = Finished(context, panels)
        new_id = RESULTS.add(finished)
        multi = next((r for r in results if r.run is not None), None)
        total = sum(r.seconds for r in results)
        yield (progress_html(1.0, tr.text("denoising.done", lang, n=len(results), seconds=total)),
               notice_text(), gallery_items, _table(tr, lang, noisy, results),
               zoom_plot(finished, zoom, lang), path_items(tr, lang, multi) if multi else [],
               summary(prepared.sigma, prepared.sigma_estimated, results, noisy), new_id)

    @guarded(tr)
    def rezoom(run_id, zoom_x, zoom_y, zoom_size, lang):
        if not run_id:
            return gr.skip()
        return zoom_plot(RESULTS.get(run_id), check_zoom(zoom_x, zoom_y, zoom_size), lang)

    inputs = [image, sigma, seed, methods, sigma_override, steps, eta, color, max_side, zoom_x, zoom_y, zoom_size,
              lang]
    outputs = [status, notice, gallery, table, zoom, path, summary_json, run_id]
    event = run.click(denoise, inputs, outputs, js=LANG_JS, api_name="denoise", show_progress="hidden", **heavy)

    def stopped(lang):
        return progress_html(0.0, tr.text("denoising.stopped", lang))

    stop.click(stopped, [lang], status, js=LANG_JS, cancels=[event], queue=False, api_visibility="private")
    gr.on([zoom_x.input, zoom_y.input, zoom_size.input], rezoom, [run_id, zoom_x, zoom_y, zoom_size, lang],
          zoom, js=LANG_JS, api_name="denoise_zoom", concurrency_id="light", trigger_mode="always_last",
          show_progress="hidden")
