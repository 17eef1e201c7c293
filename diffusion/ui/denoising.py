"""Lesson 4 tab: denoise your own photos with a diffusion model (model not shipped yet)."""

from __future__ import annotations

import gradio as gr

from diffusion.ui.common import AppSettings, Translator, unavailable_tab

STRINGS = {
    "en": {
        "denoising.tab": "4 · Denoising",
        "denoising.intro": (
            "## Denoising: a diffusion model is a denoiser\n"
            "Trained at every noise level, the network's noise estimate gives the best guess of the "
            "clean image in one step (Tweedie's formula):\n\n"
            "$$\\hat x_0 = \\frac{x_t - \\sqrt{1-\\bar\\alpha_t}\\,\\epsilon_\\theta(x_t, t)}{\\sqrt{\\bar\\alpha_t}}$$\n\n"
            "This lesson will compare it with classical denoisers, including Gaussian blur, "
            "which is the heat equation of lesson 1."
        ),
    },
    "zh-CN": {
        "denoising.tab": "4 · 去噪",
        "denoising.intro": (
            "## 去噪：扩散模型就是一个去噪器\n"
            "网络在每个噪声水平上都训练过，它对噪声的估计一步就能给出干净图像的最优猜测（Tweedie 公式）：\n\n"
            "$$\\hat x_0 = \\frac{x_t - \\sqrt{1-\\bar\\alpha_t}\\,\\epsilon_\\theta(x_t, t)}{\\sqrt{\\bar\\alpha_t}}$$\n\n"
            "本课将把它与经典去噪方法比较，其中包括高斯模糊——也就是第 1 课的热方程。"
        ),
    },
}


def build(tr: Translator, settings: AppSettings, demo: gr.Blocks) -> None:
    """Build the tab body."""
    unavailable_tab(tr, "denoising")
