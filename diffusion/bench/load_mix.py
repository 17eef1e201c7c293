"""What the simulated students of ``python -m diffusion.bench load`` click: endpoints, shares and settings."""

from __future__ import annotations

from typing import Any


def example_picture() -> str:
    """The photo the students' noising and denoising requests upload."""
    from diffusion.examples import list_examples

    return str(next(p for p in list_examples() if p.name == "coffee.png"))


def actions(example: str) -> dict[str, tuple[float, dict[str, Any]]]:
    """Endpoint → (share of requests, arguments): quick settings a student would try first.

    Text-to-image is left out when the embedded model is not installed (a server without it
    offers only hub models, which this offline test cannot download).
    """
    from gradio_client import handle_file

    from diffusion.models import registry as models

    mix = {
        "heat_simulate": (0.40, dict(initial_condition="spike", custom_expression="exp(-(x-50)**2/20)",
                                     diffusivity=0.1, length=100.0, n_points=400, t_end=20.0, n_steps=2000,
                                     scheme="ftcs", boundary="dirichlet", sine_mode=1, seed=0, lang="en")),
        "forward_noise": (0.30, dict(image=handle_file(example), schedule="linear", num_train_timesteps=1000,
                                     t=300, seed=0, lang="en")),
        "sample": (0.12, dict(sampler="ddim", num_inference_steps=20, eta=0.0, seed=0, batch_size=4, digit="random",
                              guidance_scale=2.0, lang="en")),
        "denoise": (0.12, dict(image=handle_file(example), sigma=25, seed=0,
                               methods=["diffusion_one_step", "gaussian_heat", "total_variation"], sigma_override=0,
                               steps=4, eta=0.0, color="opponent", max_side=192, zoom_x=50, zoom_y=50,
                               zoom_size=32, lang="en")),
        "text_to_image": (0.06, dict(prompt="a small red circle at the top left on a white background",
                                     num_inference_steps=20)),
        "text_to_image_compare": (0.02, dict(prompt_a="a small red circle", prompt_b="a small blue square",
                                             num_inference_steps=10)),
        "text_to_image_guidance_sweep": (0.02, dict(prompt="a large yellow star", num_inference_steps=10)),
        "lab2d_train": (0.05, dict(dataset="moons", n_points=1000, seed=0, train_steps=1000, hidden=128, depth=3,
                                   learning_rate=0.003, schedule="linear", text="", lang="en")),
    }
    if not models.text2image_available():  # offline, the other text-to-image models cannot load
        for name in [n for n in mix if n.startswith("text_to_image")]:
            del mix[name]
    return mix
