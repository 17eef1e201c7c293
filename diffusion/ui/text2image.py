"""Lesson 5 tab: text-to-image through a diffusers pipeline (not wired up yet)."""

from __future__ import annotations

import gradio as gr

from diffusion.ui.common import AppSettings, Translator, unavailable_tab

STRINGS = {
    "en": {
        "text2image.tab": "5 · Text to image",
        "text2image.intro": (
            "## Text to image\n"
            "A text encoder turns the prompt $c$ into vectors, and the denoiser is steered towards it "
            "with classifier-free guidance:\n\n"
            "$$\\tilde\\epsilon = \\epsilon_\\theta(x_t, t, \\varnothing) + w\\,\\big(\\epsilon_\\theta(x_t, t, c) "
            "- \\epsilon_\\theta(x_t, t, \\varnothing)\\big)$$\n\n"
            "Stable Diffusion runs this in a compressed latent space and decodes the result with a VAE."
        ),
    },
    "zh-CN": {
        "text2image.tab": "5 · 文生图",
        "text2image.intro": (
            "## 文生图\n"
            "文本编码器把提示词 $c$ 变成向量，再用无分类器引导把去噪器推向它：\n\n"
            "$$\\tilde\\epsilon = \\epsilon_\\theta(x_t, t, \\varnothing) + w\\,\\big(\\epsilon_\\theta(x_t, t, c) "
            "- \\epsilon_\\theta(x_t, t, \\varnothing)\\big)$$\n\n"
            "Stable Diffusion 在压缩的潜空间中完成这一过程，再用 VAE 解码出图像。"
        ),
    },
}


def build(tr: Translator, settings: AppSettings, demo: gr.Blocks) -> None:
    """Build the tab body."""
    unavailable_tab(tr, "text2image")
