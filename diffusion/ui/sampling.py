"""Lesson 3 tab: DDPM/DDIM sampling from a trained digit model (model not shipped yet)."""

from __future__ import annotations

import gradio as gr

from diffusion.ui.common import AppSettings, Translator, unavailable_tab

STRINGS = {
    "en": {
        "sampling.tab": "3 · Sampling",
        "sampling.intro": (
            "## Sampling: from noise to a digit\n"
            "A trained network $\\epsilon_\\theta(x_t, t)$ predicts the noise in $x_t$. "
            "DDPM (Ho et al. 2020, eq. 11) walks back one step at a time:\n\n"
            "$$x_{t-1} = \\frac{1}{\\sqrt{\\alpha_t}}\\left(x_t - \\frac{\\beta_t}{\\sqrt{1-\\bar\\alpha_t}}"
            "\\,\\epsilon_\\theta(x_t, t)\\right) + \\sigma_t z, \\quad z \\sim \\mathcal{N}(0, I)$$\n\n"
            "DDIM (Song et al. 2021, eq. 12) takes larger, optionally deterministic steps through the "
            "predicted clean image $\\hat x_0$."
        ),
    },
    "zh-CN": {
        "sampling.tab": "3 · 采样",
        "sampling.intro": (
            "## 采样：从噪声到数字\n"
            "训练好的网络 $\\epsilon_\\theta(x_t, t)$ 预测 $x_t$ 中的噪声。"
            "DDPM（Ho 等，2020，式 11）一步一步往回走：\n\n"
            "$$x_{t-1} = \\frac{1}{\\sqrt{\\alpha_t}}\\left(x_t - \\frac{\\beta_t}{\\sqrt{1-\\bar\\alpha_t}}"
            "\\,\\epsilon_\\theta(x_t, t)\\right) + \\sigma_t z, \\quad z \\sim \\mathcal{N}(0, I)$$\n\n"
            "DDIM（Song 等，2021，式 12）借助预测的干净图像 $\\hat x_0$ 迈出更大的步子，并且可以是确定性的。"
        ),
    },
}


def build(tr: Translator, settings: AppSettings, demo: gr.Blocks) -> None:
    """Build the tab body."""
    unavailable_tab(tr, "sampling")
