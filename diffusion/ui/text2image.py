"""Lesson 5 tab: text-to-image through a diffusers pipeline, streamed live and scrubbable.

The run works like lesson 3's (and reuses its :class:`~diffusion.ui.sampling.LiveRun`
and :class:`~diffusion.ui.sampling.RunStore`): :func:`diffusion.lessons.text2image.pipeline.generate`
runs in a worker thread, the handler yields the newest step a few times a second,
Stop (or a closed page) ends the pipeline after its current step, and the recorded
latents stay cached under a run id for the step slider. Frames are decoded by the
VAE only when shown, so recording costs next to nothing.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from diffusion.models import registry as models
from diffusion.lessons.text2image import pipeline as t2i
from diffusion.errors import InputError
from diffusion.images import check_upload, load_image
from diffusion.ui.common import (LANG_JS, LATEX, AppSettings, ImageInput, Translator, gpu_task, guarded,
                                 lang_input, progress_html)
from diffusion.ui.sampling import LiveRun, RunStore

log = logging.getLogger(__name__)
DEFAULTS = t2i.T2IRequest()
RUNS = RunStore(max_bytes=400 * 2**20, code_prefix="t2i_")
MAX_INIT_SIDE = 1024
EXAMPLES = ("a large red circle in the center on a white background",
            "a small yellow star at the top right on a blue background",
            "a large green triangle at the bottom left on a black background",
            "a purple square on an orange background", "a blue star")

STRINGS = {
    "en": {
        "text2image.tab": "5 · Text to image",
        "text2image.intro": (
            "## Text to image\n"
            "A text encoder turns the prompt $c$ into vectors. Starting from noise $z_T$ in a small *latent* "
            "space, the denoiser removes noise step by step, steered towards the prompt by classifier-free "
            "guidance:\n\n"
            "$$\\tilde\\epsilon = \\epsilon_\\theta(z_t, t, \\varnothing) + w\\,\\big(\\epsilon_\\theta(z_t, t, c) "
            "- \\epsilon_\\theta(z_t, t, \\varnothing)\\big)$$\n\n"
            "and a VAE decodes the final latent $z_0$ into pixels (Stable Diffusion, Rombach et al. 2022). "
            "The embedded model is our own tiny Stable Diffusion: it knows colours, four shapes, two sizes, "
            "five places and backgrounds, and draws 64×64 pictures. Online, the same tab runs real models."
        ),
        "text2image.model": "Model",
        "text2image.model_embedded": "Embedded: tiny shapes model (offline)",
        "text2image.prompt": "Prompt",
        "text2image.examples": "Example prompts",
        "param.scheduler": "Scheduler",
        "param.strength": "Strength",
        "text2image.negative_prompt": "Negative prompt (what to steer away from)",
        "text2image.steps": "Steps",
        "text2image.guidance": "Guidance scale w",
        "text2image.seed": "Seed",
        "text2image.scheduler": "Scheduler",
        "text2image.width": "Width (0 = the model's size)",
        "text2image.height": "Height (0 = the model's size)",
        "text2image.batch": "Pictures",
        "text2image.img2img": "Image to image (start from your picture)",
        "text2image.init_image": "Starting picture (optional)",
        "text2image.strength": "Strength (how much noise is added to it)",
        "text2image.generate": "Generate",
        "text2image.stop": "Stop",
        "text2image.latent": "z_t: the latent (first 3 channels)",
        "text2image.x0": "x̂₀: what the model expects to end with (decoded)",
        "text2image.scrub": "Step (drag to replay the run)",
        "text2image.gallery": "Pictures (PNG, lossless)",
        "text2image.summary": "Summary (JSON)",
        "text2image.loading": "Loading the model…",
        "text2image.progress": "Step {step} / {total} · t = {t:.0f} · {seconds:.1f} s",
        "text2image.finished": "Done: {total} steps in {seconds:.2f} s.",
        "text2image.stopped": "Stopped after {done} of {total} steps ({seconds:.2f} s).",
        "text2image.scrubbed": "Replay: step {step} / {total} · t = {t:.0f} · ᾱ_t = {alpha_bar:.3g}",
        "text2image.unknown": "ℹ️ The model does not know these words and ignores them: {words}.",
        "text2image.strength_info": (
            "Strength {strength:.2f} keeps the last {steps} of {total} steps: your picture's latent is noised to "
            "t = {t:.0f}, where ᾱ_t = {alpha_bar:.3f}, i.e. z_t = {a:.2f}·z₀ + {b:.2f}·ε (the forward process "
            "of lesson 2), and denoised from there."),
        "text2image.no_model": (
            "**The embedded text-to-image model is not available** (its folder is missing or damaged). "
            "Models chosen in the list above may still work online; the other lessons are not affected."),
        "error.lcm_only": "The LCM scheduler only works with LCM-distilled models; choose another scheduler.",
        "error.prompt_too_long": "{name} is {n} characters long; the limit is {limit}.",
        "error.model_not_allowed": "The model {model} is not offered here. Choose one of the listed models.",
        "error.model_load_failed": "The model {model} could not be loaded ({reason}). The embedded model still works.",
        "error.no_steps": "This run was stopped before its first step.",
        "error.t2i_no_run": "Generate pictures first.",
        "error.out_of_memory": "The GPU ran out of memory for a {w}×{h} picture; choose a smaller size or fewer steps.",
        "error.t2i_run_expired": "This run is no longer kept; generate again.",
    },
    "zh-CN": {
        "text2image.tab": "5 · 文生图",
        "text2image.intro": (
            "## 文生图\n"
            "文本编码器把提示词 $c$ 变成向量。模型从一个很小的*潜空间*里的噪声 $z_T$ 出发，一步步去噪，"
            "并用无分类器引导把结果推向提示词：\n\n"
            "$$\\tilde\\epsilon = \\epsilon_\\theta(z_t, t, \\varnothing) + w\\,\\big(\\epsilon_\\theta(z_t, t, c) "
            "- \\epsilon_\\theta(z_t, t, \\varnothing)\\big)$$\n\n"
            "最后由 VAE 把潜变量 $z_0$ 解码成像素（Stable Diffusion，Rombach 等，2022）。"
            "内置模型是我们自己训练的小型 Stable Diffusion：它认识颜色、四种形状、两种大小、五个位置和背景色，"
            "生成 64×64 的图片。联网时，同一个标签页可以运行真正的大模型。"
        ),
        "text2image.model": "模型",
        "text2image.model_embedded": "内置：小型形状模型（离线）",
        "text2image.prompt": "提示词（英文）",
        "text2image.examples": "示例提示词",
        "param.scheduler": "调度器",
        "param.strength": "强度",
        "text2image.negative_prompt": "反向提示词（希望避开的内容）",
        "text2image.steps": "步数",
        "text2image.guidance": "引导系数 w",
        "text2image.seed": "随机种子",
        "text2image.scheduler": "调度器",
        "text2image.width": "宽度（0 = 模型默认尺寸）",
        "text2image.height": "高度（0 = 模型默认尺寸）",
        "text2image.batch": "图片数量",
        "text2image.img2img": "图生图（从你的图片出发）",
        "text2image.init_image": "起始图片（可选）",
        "text2image.strength": "强度（给它加多少噪声）",
        "text2image.generate": "生成",
        "text2image.stop": "停止",
        "text2image.latent": "z_t：潜变量（前 3 个通道）",
        "text2image.x0": "x̂₀：模型预期的最终结果（已解码）",
        "text2image.scrub": "步骤（拖动以回放）",
        "text2image.gallery": "图片（PNG，无损）",
        "text2image.summary": "摘要（JSON）",
        "text2image.loading": "正在加载模型…",
        "text2image.progress": "第 {step} / {total} 步 · t = {t:.0f} · {seconds:.1f} 秒",
        "text2image.finished": "完成：{total} 步，用时 {seconds:.2f} 秒。",
        "text2image.stopped": "已在第 {done} / {total} 步停止（{seconds:.2f} 秒）。",
        "text2image.scrubbed": "回放：第 {step} / {total} 步 · t = {t:.0f} · ᾱ_t = {alpha_bar:.3g}",
        "text2image.unknown": "ℹ️ 模型不认识这些词，会忽略它们：{words}。",
        "text2image.strength_info": (
            "强度 {strength:.2f} 保留 {total} 步中的最后 {steps} 步：你的图片的潜变量被加噪到 t = {t:.0f}，"
            "此时 ᾱ_t = {alpha_bar:.3f}，即 z_t = {a:.2f}·z₀ + {b:.2f}·ε（第 2 课的前向过程），再从那里去噪。"),
        "text2image.no_model": (
            "**内置文生图模型不可用**（文件夹缺失或损坏）。上面列表中的其他模型联网时仍可使用；其他课程不受影响。"),
        "error.lcm_only": "LCM 调度器只适用于经过 LCM 蒸馏的模型，请换一个调度器。",
        "error.prompt_too_long": "{name} 有 {n} 个字符，上限是 {limit}。",
        "error.model_not_allowed": "这里不提供模型 {model}，请从列表中选择。",
        "error.model_load_failed": "无法加载模型 {model}（{reason}）。内置模型仍然可用。",
        "error.no_steps": "这次运行在第一步之前就停止了。",
        "error.t2i_no_run": "请先生成图片。",
        "error.out_of_memory": "生成 {w}×{h} 的图片时 GPU 显存不足；请选择更小的尺寸或更少的步数。",
        "error.t2i_run_expired": "这次运行已不再保存，请重新生成。",
    },
}
SCHEDULER_LABELS = {"ddim": "DDIM", "ddpm": "DDPM", "euler": "Euler", "euler_ancestral": "Euler ancestral",
                    "dpm_solver": "DPM-Solver++ 2M", "lcm": "LCM"}


def _pictures(info: Any, decode: Any) -> tuple[np.ndarray, np.ndarray]:
    """The latent z_t of one step as a picture, and its x̂₀ decoded by the VAE."""
    return t2i.latent_picture(info.x_t), t2i.to_uint8(decode(info.x0_pred))


def build(tr: Translator, settings: AppSettings, demo: gr.Blocks) -> None:
    """Build the tab body and wire its events."""
    gr.Markdown(tr("text2image.intro"), latex_delimiters=LATEX)
    embedded_ok = models.text2image_available()
    if not embedded_ok:
        log.warning("lesson 5's embedded model is off: no usable folder at %s", models.T2I_PATH)
        gr.Markdown(tr("text2image.no_model"), elem_classes=["dl-warning"], elem_id="t2i-no-model")
    extra = tuple(settings.t2i_models)
    choices = ([(tr("text2image.model_embedded"), t2i.EMBEDDED)] if embedded_ok else []) + \
        [(m, m) for m in (*extra, *t2i.SUGGESTED) if m]
    default_model = extra[0] if extra else (t2i.EMBEDDED if embedded_ok else t2i.SUGGESTED[0])
    device = settings.device
    heavy = dict(concurrency_id="heavy", concurrency_limit=settings.heavy_concurrency)

    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            model = gr.Dropdown(choices, value=default_model, label=tr("text2image.model"), elem_id="t2i-model",
                                allow_custom_value=settings.allow_any_model)
            prompt = gr.Textbox(DEFAULTS.prompt, label=tr("text2image.prompt"), lines=2, elem_id="t2i-prompt",
                                max_length=t2i.MAX_PROMPT_CHARS)
            gr.Examples([[e] for e in EXAMPLES], [prompt], label=tr("text2image.examples"))
            negative = gr.Textbox("", label=tr("text2image.negative_prompt"), elem_id="t2i-negative",
                                  max_length=t2i.MAX_PROMPT_CHARS)
            with gr.Row():
                steps = gr.Slider(*t2i.LIMITS["num_inference_steps"], value=DEFAULTS.num_inference_steps, step=1,
                                  label=tr("text2image.steps"), elem_id="t2i-steps")
                guidance = gr.Slider(*t2i.LIMITS["guidance_scale"], value=DEFAULTS.guidance_scale, step=0.5,
                                     label=tr("text2image.guidance"), elem_id="t2i-guidance")
            with gr.Row():
                scheduler = gr.Dropdown([(SCHEDULER_LABELS[s], s) for s in t2i.SCHEDULERS], value=DEFAULTS.scheduler,
                                        label=tr("text2image.scheduler"), elem_id="t2i-scheduler")
                seed = gr.Number(DEFAULTS.seed, precision=0, label=tr("text2image.seed"), elem_id="t2i-seed")
            with gr.Row():
                width = gr.Slider(0, t2i.MAX_SIDE, value=0, step=8, label=tr("text2image.width"), elem_id="t2i-width")
                height = gr.Slider(0, t2i.MAX_SIDE, value=0, step=8, label=tr("text2image.height"),
                                   elem_id="t2i-height")
            batch = gr.Slider(*t2i.LIMITS["batch_size"], value=DEFAULTS.batch_size, step=1,
                              label=tr("text2image.batch"), elem_id="t2i-batch")
            with gr.Accordion(tr("text2image.img2img"), open=False, elem_id="t2i-img2img"):
                init_image = ImageInput(label=tr("text2image.init_image"), type="filepath", sources=["upload"],
                                        height=180, elem_id="t2i-init")
                strength = gr.Slider(*t2i.LIMITS["strength"], value=DEFAULTS.strength, step=0.05,
                                     label=tr("text2image.strength"), elem_id="t2i-strength")
                strength_info = gr.Markdown(elem_id="t2i-strength-info")
            with gr.Row():
                run = gr.Button(tr("text2image.generate"), variant="primary", elem_id="t2i-run")
                stop = gr.Button(tr("text2image.stop"), variant="stop", elem_id="t2i-stop")
        with gr.Column(scale=2):
            status = gr.HTML(elem_id="t2i-status")
            notice = gr.Markdown(elem_id="t2i-notice")
            with gr.Row():
                latent = gr.Image(label=tr("text2image.latent"), format="png", height=260, interactive=False,
                                  elem_id="t2i-latent", elem_classes=["dl-pixelated"])
                x0 = gr.Image(label=tr("text2image.x0"), format="png", height=260, interactive=False,
                              elem_id="t2i-x0", elem_classes=["dl-pixelated"])
            scrub = gr.Slider(1, t2i.LIMITS["num_inference_steps"][1], value=1, step=1, interactive=False,
                              label=tr("text2image.scrub"), elem_id="t2i-scrub")
            gallery = gr.Gallery(label=tr("text2image.gallery"), columns=4, height="auto", format="png",
                                 object_fit="contain", elem_id="t2i-gallery", elem_classes=["dl-pixelated"])
            summary = gr.JSON(label=tr("text2image.summary"), elem_id="t2i-summary")
    run_id = gr.Textbox(visible=False, max_length=64, elem_id="t2i-run-id")
    lang = lang_input()

    def pipeline_for(choice: Any) -> tuple[Any, str]:
        ref = t2i.resolve_model(choice, models.T2I_PATH, extra, settings.allow_any_model)
        name = t2i.EMBEDDED if Path(ref) == models.T2I_PATH else ref
        pipe = models.load_text2image(None if name == t2i.EMBEDDED else ref, device, offline=settings.offline)
        return pipe, name

    @gpu_task(duration=120)
    @guarded(tr)
    def generate(prompt, negative_prompt="", num_inference_steps=DEFAULTS.num_inference_steps,
                 guidance_scale=DEFAULTS.guidance_scale, seed=DEFAULTS.seed, scheduler=DEFAULTS.scheduler,
                 width=0, height=0, batch_size=DEFAULTS.batch_size, model=default_model, init_image=None,
                 strength=DEFAULTS.strength, lang="en"):  # defaults: init_image is optional through the API
        new_id = RUNS.new_id()
        idle = gr.update(interactive=False, value=1)
        yield (progress_html(0, tr.text("text2image.loading", lang)), gr.skip(), gr.skip(), idle, gr.skip(),
               "", new_id, gr.skip())
        pipe, name = pipeline_for(model)
        request = t2i.T2IRequest(prompt, negative_prompt, num_inference_steps, guidance_scale, seed, scheduler,
                                 width, height, batch_size, strength).validated(t2i.default_side(pipe),
                                                                                t2i.is_lcm(pipe))
        start = None
        if init_image:
            pixels, _ = load_image(check_upload(init_image), max_side=MAX_INIT_SIDE, mode="RGB")
            start = Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8))
        unknown = t2i.unknown_words(pipe, request.prompt)
        note = tr.text("text2image.unknown", lang, words=", ".join(unknown)) if unknown else ""
        live = LiveRun(lambda callback, stop_flag: t2i.generate_within_memory(
            pipe, request, model=name, init_image=start, callback=callback, stop=stop_flag))
        RUNS.add_live(new_id, live)
        decode = (lambda z: t2i.decode_latents(pipe.vae, z))
        pacer = t2i.PreviewPacer()
        generation = None
        try:
            for info in live.steps():
                text = tr.text("text2image.progress", lang, step=info.step + 1, total=info.total, t=info.t,
                               seconds=time.perf_counter() - live.started)
                x0 = pacer.decode(decode, info.x0_pred) if pacer.due() else gr.skip()
                yield (progress_html((info.step + 1) / info.total, text), t2i.latent_picture(info.x_t), x0,
                       gr.skip(), gr.skip(), note, gr.skip(), gr.skip())
            generation = live.result
        finally:
            live.stop()
            RUNS.finish(new_id, generation)
        n = len(generation)
        total = n if not generation.stopped else max(n, request.num_inference_steps)
        key = "text2image.stopped" if generation.stopped else "text2image.finished"
        text = tr.text(key, lang, done=n, total=total, seconds=generation.seconds)
        pictures = _pictures(generation.frame(n - 1), decode) if n else (None, None)
        items = [(np.asarray(im), f"{i + 1}") for i, im in enumerate(generation.images)]
        result = dict(generation.summary(), run_id=new_id, unknown_words=unknown)
        yield (progress_html(1.0 if not generation.stopped else n / max(total, 1), text), *pictures,
               gr.update(interactive=n > 1, maximum=max(n, 2), value=max(n, 1)), items, note, new_id, result)

    @guarded(tr)
    def replay(current_id, step, lang):
        generation = RUNS.get(current_id)
        n = len(generation)
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step):
            raise InputError("not_a_number", "step must be a number.", name="step")
        info = generation.frame(int(min(max(step, 1), n)) - 1)
        text = tr.text("text2image.scrubbed", lang, step=info.step + 1, total=n, t=info.t, alpha_bar=info.alpha_bar)
        return (progress_html((info.step + 1) / n, text), t2i.latent_picture(info.x_t),
                t2i.to_uint8(generation.decoder(info.x0_pred)))

    @guarded(tr)
    def explain_strength(model, scheduler, num_inference_steps, strength, lang):
        pipe, _ = pipeline_for(model)
        request = t2i.T2IRequest(num_inference_steps=num_inference_steps, scheduler=scheduler,
                                 strength=strength).validated(t2i.default_side(pipe), t2i.is_lcm(pipe))
        start = t2i.strength_to_timestep(pipe, request.scheduler, request.num_inference_steps, request.strength)
        if start["t"] is None or start["alpha_bar"] is None:
            return ""
        a = start["alpha_bar"]
        return tr.text("text2image.strength_info", lang, strength=request.strength, steps=start["steps_run"],
                       total=request.num_inference_steps, t=start["t"], alpha_bar=a, a=math.sqrt(a),
                       b=math.sqrt(1 - a))

    inputs = [prompt, negative, steps, guidance, seed, scheduler, width, height, batch, model, init_image, strength,
              lang]
    event = run.click(generate, inputs, [status, latent, x0, scrub, gallery, notice, run_id, summary], js=LANG_JS,
                      api_name="text_to_image", show_progress="hidden", **heavy)
    stop.click(lambda current: RUNS.stop(current) and None, [run_id], None, queue=False,
               api_name="text_to_image_stop", cancels=[event] if settings.zero_gpu else None)
    scrub.input(replay, [run_id, scrub, lang], [status, latent, x0], js=LANG_JS, api_name="text_to_image_scrub",
                concurrency_id="heavy", trigger_mode="always_last", show_progress="hidden")
    for trigger in (strength.release, steps.release, scheduler.change):
        trigger(explain_strength, [model, scheduler, steps, strength, lang], strength_info, js=LANG_JS,
                api_visibility="private", concurrency_id="light", show_progress="hidden")
