"""Faults: damaged models switch off only their own lesson; cancelled jobs free what they held.

A second app is started here with every shipped model replaced by a damaged copy
(truncated safetensors, a configuration that does not fit, a missing file). It must
start, serve the lessons without models, and answer the model lessons with a clear
message instead of a crash.
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from diffusion.models import registry as models
from tests.conftest import free_port

pytestmark = pytest.mark.e2e


def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: max(8, path.stat().st_size // 3)])


# Runs before the damaged app exists: that fixture swaps the model paths for the whole module.
def test_a_closed_page_ends_the_run_and_frees_it(client):
    from diffusion.ui import sampling as sampling_tab
    from diffusion.ui.text2image import run as t2i_tab

    cases = [("/sample", dict(sampler="ddpm", num_inference_steps=1000, batch_size=16), sampling_tab.RUNS)]
    if models.text2image_available():
        cases.append(("/text_to_image", dict(prompt="a red circle", num_inference_steps=100, batch_size=4),
                      t2i_tab.RUNS))
    for api, args, store in cases:
        job = client.submit(**args, api_name=api)
        deadline = time.monotonic() + 60
        while not store._live and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store._live, f"{api} never started: {job.status()} {job.exception() if job.done() else ''}"
        job.cancel()  # what a closed browser tab does
        deadline = time.monotonic() + 60
        while store._live and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not store._live, f"{api}: the cancelled run is still registered"
        workers = [t for t in threading.enumerate() if t.name == "sampling-run"]
        deadline = time.monotonic() + 30
        while workers and time.monotonic() < deadline:
            time.sleep(0.1)
            workers = [t for t in threading.enumerate() if t.name == "sampling-run" and t.is_alive()]
        assert not workers, f"{api}: the worker thread kept running after the page closed"


@pytest.fixture(scope="module")
def damaged_app(tmp_path_factory, client):  # the shared app is built first, with the real models
    import app

    root = tmp_path_factory.mktemp("damaged-models")
    mp = pytest.MonkeyPatch()
    mnist = root / "mnist-ddpm"
    shutil.copytree(models.MODELS["mnist"].path, mnist)
    config = json.loads((mnist / "unet" / "config.json").read_text())
    config["sample_size"] = 64  # a configuration that does not fit the lesson
    (mnist / "unet" / "config.json").write_text(json.dumps(config))
    spec = models.MODELS["mnist"]
    mp.setitem(models.MODELS, "mnist", models.ModelSpec(path=mnist, kind=spec.kind, title=spec.title,
                                                        image_size=spec.image_size, in_channels=spec.in_channels,
                                                        num_class_embeds=spec.num_class_embeds))
    denoiser = root / "photo-denoiser"
    shutil.copytree(models.MODELS[models.DENOISER].path, denoiser)
    _truncate(denoiser / "unet" / "diffusion_pytorch_model.safetensors")
    mp.setitem(models.MODELS, models.DENOISER, models.MODELS[models.DENOISER].at(denoiser))
    t2i_folder = root / "tiny-shapes-sd"
    if models.MODELS[models.T2I].path.is_dir():
        shutil.copytree(models.MODELS[models.T2I].path, t2i_folder)
        _truncate(t2i_folder / "unet" / "diffusion_pytorch_model.safetensors")
    mp.setitem(models.MODELS, models.T2I, models.MODELS[models.T2I].at(t2i_folder))
    models.clear_cache()
    settings = app.settings_from_args(app.parse_args(["--device", "cpu"]))
    demo, tr = app.create_app(settings)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **app.launch_kwargs(settings, tr))
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()
        mp.undo()
        models.clear_cache()


def test_the_lessons_without_models_still_work(damaged_app):
    from tests.e2e.test_api import HEAT_DEFAULTS

    assert damaged_app.predict(**HEAT_DEFAULTS, api_name="/heat_simulate")[-1]["stable"] is True


@pytest.mark.parametrize("call", ["sample", "denoise", "text_to_image"])
def test_damaged_models_answer_with_a_clear_message(damaged_app, call):
    from gradio_client import handle_file

    from diffusion.examples import list_examples

    endpoints = set(damaged_app.view_api(print_info=False, return_format="dict")["named_endpoints"])
    if f"/{call}" not in endpoints:
        return  # the lesson noticed at start-up and shows its notice instead (checked in the unit tests)
    photo = handle_file(str(list_examples()[0]))
    args = {"sample": dict(sampler="ddim", num_inference_steps=3),
            "denoise": dict(image=photo, methods=["diffusion_one_step"], max_side=64),
            "text_to_image": dict(prompt="a red circle", num_inference_steps=2)}[call]
    with pytest.raises(AppError, match="not available|could not be loaded|模型"):
        damaged_app.predict(**args, api_name=f"/{call}")
    # The failure is remembered; the next request gets the same message at once, and the server carries on.
    with pytest.raises(AppError):
        damaged_app.predict(**args, api_name=f"/{call}")
    if call == "denoise":  # the classical methods still run, with a notice about the model
        out = damaged_app.predict(**dict(args, methods=["diffusion_one_step", "gaussian_heat"]), api_name="/denoise")
        assert "not available" in out[1] and "gaussian_heat" in out[-1]["methods"]
