"""Lesson 3 tab: DDPM/DDIM sampling from a trained digit model (model not shipped yet)."""

from __future__ import annotations

import gradio as gr

from diffusion.ui.common import AppSettings, Translator, unavailable_tab

STRINGS = {
    "en": {
        "sampling.tab": "3 · Sampling",
        "param.sampler": "Sampler",
        "param.num_inference_steps": "Sampling steps",
        "param.eta": "DDIM η (0 = deterministic)",
        "param.batch_size": "Number of digits",
        "param.guidance_scale": "Guidance scale",
        "param.step": "Step",
        "error.bad_digit": "The digit must be 0–9 or random (got {value}).",
        "error.model_unavailable": "The {name} model is not available on this server, so this lesson is switched off. The other tabs still work.",
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
        "param.sampler": "采样器",
        "param.num_inference_steps": "采样步数",
        "param.eta": "DDIM η（0 表示确定性采样）",
        "param.batch_size": "数字个数",
        "param.guidance_scale": "引导强度",
        "param.step": "步",
        "error.bad_digit": "数字必须是 0–9 或“随机”（当前为 {value}）。",
        "error.model_unavailable": "服务器上没有可用的 {name} 模型，因此本课暂时关闭；其他标签页仍可正常使用。",
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
