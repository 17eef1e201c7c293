"""End-to-end on a simulated ZeroGPU Space: the app as ``python app.py`` starts it there.

The server runs in its own process with ``SPACES_ZERO_GPU`` set and the ``spaces`` test
double of ``tests/zerogpu`` importable, as on a Space: every GPU call runs in a forked
worker process, its inputs and outputs pickled, its ``duration`` enforced. Each model
endpoint must give the pixels of the ordinary in-process server (the ``client``
fixture), stream, stop and scrub.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from diffusion.models import registry as models
from tests.conftest import free_port

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not (models.available("mnist") and models.denoiser_available()
                                      and models.text2image_available()), reason="a shipped model is missing")]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "assets" / "examples" / "chelsea.png"
SAMPLE_OUT = ("status", "x_t", "x0", "eps", "gallery", "scrub", "run_id", "summary")


@pytest.fixture(scope="module")
def zero_gpu():
    """A gradio_client on the app launched as on a ZeroGPU Space (the test double of ``spaces``)."""
    port = free_port()
    env = {**os.environ, "SPACES_ZERO_GPU": "true", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "zerogpu"), str(ROOT)])}
    server = subprocess.Popen([sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port),
                               "--device", "cpu", "--render-workers", "0"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client, deadline = None, time.monotonic() + 240
    while client is None and time.monotonic() < deadline and server.poll() is None:
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        except Exception:  # noqa: BLE001 - not listening yet
            time.sleep(1)
    if client is None:
        server.kill()
        pytest.fail("the simulated ZeroGPU app did not start: " + (server.stderr.read() or "")[-2000:])
    client.server_pid = server.pid
    try:
        yield client
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


def children(pid: int) -> set[str]:
    """The processes ``pid`` has forked (Linux)."""
    return {child for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()}


def pictures(gallery) -> list[np.ndarray]:
    return [np.asarray(Image.open(item["image"]["path"] if isinstance(item["image"], dict) else item["image"]))
            for item in gallery]


def sample(client, **changes):
    request = dict(sampler="ddim", num_inference_steps=10, eta=0.0, seed=11, batch_size=4, digit="7",
                   guidance_scale=2.0, lang="en") | changes
    job = client.submit(**request, api_name="/sample")
    updates = list(job)
    return updates, dict(zip(SAMPLE_OUT, job.result()))


def test_sampling_crosses_the_process_boundary_with_the_same_pixels(zero_gpu, client):
    updates, remote = sample(zero_gpu)
    _, local = sample(client)
    assert len(updates) >= 3  # it streamed: waiting or first step, more steps, the final answer
    assert remote["summary"]["steps_run"] == 10 and not remote["summary"]["stopped"]
    for a, b in zip(pictures(remote["gallery"]), pictures(local["gallery"]), strict=True):
        np.testing.assert_array_equal(a, b)
    scrubbed = zero_gpu.predict(remote["run_id"], 4, "en", api_name="/sample_scrub")  # kept in the main process
    assert "step 4 / 10" in scrubbed[0]
    # the GPU calls ran in forked workers (no drawing processes were asked for)
    assert children(zero_gpu.server_pid), "no GPU worker process was forked"


def test_stop_reaches_the_gpu_worker_and_the_run_stays_scrubbable(zero_gpu):
    job = zero_gpu.submit(sampler="ddpm", num_inference_steps=1000, eta=0.0, seed=3, batch_size=8, digit="random",
                          guidance_scale=1.0, lang="en", api_name="/sample")
    run_id, deadline = None, time.monotonic() + 120
    while run_id is None and time.monotonic() < deadline:
        run_id = next((o[6] for o in job.outputs() if isinstance(o[6], str) and o[6]), None)
        time.sleep(0.05)
    assert run_id, "the run never reported its id"
    time.sleep(1.0)
    zero_gpu.predict(run_id, api_name="/sample_stop")
    final = dict(zip(SAMPLE_OUT, job.result(timeout=120)))
    summary = final["summary"]
    assert summary["stopped"] and 1 <= summary["steps_run"] < 1000
    assert len(final["gallery"]) == 8
    last = zero_gpu.predict(run_id, summary["steps_run"], "en", api_name="/sample_scrub")
    assert f"step {summary['steps_run']} / {summary['steps_run']}" in last[0]


def denoise(client, methods=("diffusion_one_step", "diffusion_multi_step", "gaussian_heat"), steps=5):
    return client.predict(handle_file(str(EXAMPLE)), 25, 0, list(methods), 0, steps, 0.0, "opponent", 256,
                          50, 50, 64, "en", api_name="/denoise")


def test_denoising_gives_the_in_process_numbers(zero_gpu, client):
    remote, local = denoise(zero_gpu)[-1], denoise(client)[-1]
    for method in ("diffusion_one_step", "diffusion_multi_step", "gaussian_heat"):
        assert remote["methods"][method]["psnr"] == pytest.approx(local["methods"][method]["psnr"], abs=1e-3)


def t2i(client, **changes):
    request = dict(prompt="a small blue square", num_inference_steps=8, seed=4, lang="en") | changes
    job = client.submit(**request, api_name="/text_to_image")
    updates = list(job)
    return updates, job.result()


def test_text_to_image_streams_previews_and_scrubs_without_the_vae_in_the_main_process(zero_gpu, client):
    updates, remote = t2i(zero_gpu)
    _, local = t2i(client)
    summary_remote, summary_local = remote[-1], local[-1]
    assert summary_remote["steps_run"] == 8 and not summary_remote["stopped"]
    for a, b in zip(pictures(remote[4]), pictures(local[4]), strict=True):  # the gallery
        np.testing.assert_array_equal(a, b)
    assert any(u[2] for u in updates[:-1]), "no x̂₀ preview was streamed"
    status, latent, x0 = zero_gpu.predict(summary_remote["run_id"], 3, "en", api_name="/text_to_image_scrub")
    _, latent_local, x0_local = client.predict(summary_local["run_id"], 3, "en", api_name="/text_to_image_scrub")
    np.testing.assert_array_equal(np.asarray(Image.open(x0)), np.asarray(Image.open(x0_local)))
    assert "3 / 8" in status


def test_text_to_image_stop_through_the_gpu_call(zero_gpu):
    job = zero_gpu.submit(prompt="a large red circle", num_inference_steps=100, seed=1, lang="en",
                          api_name="/text_to_image")
    run_id, deadline = None, time.monotonic() + 120
    while run_id is None and time.monotonic() < deadline:  # a streamed step: the run is in the GPU worker
        run_id = next((o[6] for o in job.outputs() if o[1] and isinstance(o[6], str) and o[6]), None)
        time.sleep(0.02)
    assert run_id
    zero_gpu.predict(run_id, api_name="/text_to_image_stop")
    summary = job.result(timeout=120)[-1]
    assert summary["stopped"] and 1 <= summary["steps_run"] < 100
    status, latent, _ = zero_gpu.predict(run_id, summary["steps_run"], "en", api_name="/text_to_image_scrub")
    assert latent and f"{summary['steps_run']} / {summary['steps_run']}" in status


def test_looking_inside_text_to_image_on_zero_gpu(zero_gpu, client):
    """Two prompts and the guidance sweep are one GPU call each; attention maps and the path cross back."""
    args = ("a small red star", "a small green circle", "", 6, 2.0, 3, "ddim", 0, 0, "embedded", "en")
    remote, local = (c.predict(*args, api_name="/text_to_image_compare") for c in (zero_gpu, client))
    for k in (1, 2):  # the same pictures; a job that shared the cores with another (the local server's
        # start-up examples) ran on fewer threads, which can round a pixel by one level
        a, b = (np.asarray(Image.open(x[k])).astype(int) for x in (remote, local))
        assert a.shape == b.shape and np.abs(a - b).max() <= 1 and (a != b).mean() < 1e-3
    summary = remote[-1]
    status, maps, attention = zero_gpu.predict(summary["run_id_a"], 3, "en", api_name="/text_to_image_attention")
    _, _, local_attention = client.predict(local[-1]["run_id_a"], 3, "en", api_name="/text_to_image_attention")
    assert attention["tokens"] == local_attention["tokens"] == ["a", "small", "red", "star"]
    for a, b in zip(maps, client.predict(local[-1]["run_id_a"], 3, "en", api_name="/text_to_image_attention")[1]):
        a, b = (np.asarray(Image.open(x["image"])).astype(int) for x in (a, b))
        assert a.shape == b.shape and np.abs(a - b).mean() < 0.5  # maps over the same picture (see above)
    _, plot, path = zero_gpu.predict(summary["run_id_b"], 1, "en", api_name="/text_to_image_path")
    assert path["seeds"] == [3, 4] and plot
    sweep = zero_gpu.predict("a blue circle", "", 4, 0, "ddim", 0, 0, "embedded", "en",
                             api_name="/text_to_image_guidance_sweep")
    assert len(sweep[1]) == 4 and not sweep[3]["stopped"]


def test_the_other_model_endpoints_on_zero_gpu(zero_gpu, client, tmp_path):
    """Compare and GIF (lesson 4), the zoom (lesson 5) and the 2-D lab, whose tiny MLP stays in the main process."""
    remote = zero_gpu.predict(12, 6, 0.0, 4, 2, "7", 2.0, "en", api_name="/sample_compare")
    local = client.predict(12, 6, 0.0, 4, 2, "7", 2.0, "en", api_name="/sample_compare")
    np.testing.assert_array_equal(np.asarray(Image.open(remote[1])), np.asarray(Image.open(local[1])))
    np.testing.assert_array_equal(np.asarray(Image.open(remote[2])), np.asarray(Image.open(local[2])))
    _, final = sample(zero_gpu, num_inference_steps=5, batch_size=1)
    with Image.open(zero_gpu.predict(final["run_id"], "en", api_name="/sample_gif")) as gif:
        assert gif.n_frames == 5
    out = denoise(zero_gpu, methods=("diffusion_one_step",), steps=2)
    assert zero_gpu.predict(out[6], 20, 70, 16, "en", api_name="/denoise_zoom")
    train = dict(dataset="moons", n_points=200, seed=2, train_steps=100, hidden=32, depth=2, learning_rate=3e-3,
                 schedule="linear", text="", lang="en")
    job = zero_gpu.submit(**train, api_name="/lab2d_train")
    summary = job.result()[-1]
    points = zero_gpu.predict(summary["run_id"], "ddim", 20, 0.0, 100, 7, "en", api_name="/lab2d_sample")
    assert np.asarray(points["samples"]).shape == (100, 2)


def test_lesson_7_endpoints_on_zero_gpu(zero_gpu, client):
    """Anomaly score, export, inpainting and super-resolution cross the boundary with the in-process results."""
    picture = handle_file(str(ROOT / "assets" / "examples" / "anomaly" / "cjk.png"))
    remote = zero_gpu.predict(picture, "diffusion", "en", api_name="/anomaly_score")[-1]
    local = client.predict(picture, "diffusion", "en", api_name="/anomaly_score")[-1]
    assert remote["score"] == pytest.approx(local["score"], abs=1e-4) and remote["is_anomaly"] == local["is_anomaly"]
    export = ("37", 2, 1.0, "ddim", 5, 1, "en")
    remote = zero_gpu.predict(*export, api_name="/augment_export")
    local = client.predict(*export, api_name="/augment_export")
    assert remote[-1]["count"] == 4 and Path(remote[1]).read_bytes() == Path(local[1]).read_bytes()
    inpaint = ("heldout", 300, None, "", "top", "", "any", 1.5, 2, 0, 4, 2, "ddpm", "en")
    remote = zero_gpu.predict(*inpaint, api_name="/inpaint")
    local = client.predict(*inpaint, api_name="/inpaint")
    assert remote[-1]["hole_psnr_db"] == pytest.approx(local[-1]["hole_psnr_db"], abs=0.05)
    assert "1 /" in zero_gpu.predict(remote[-1]["run_id"], 1, "en", api_name="/inpaint_scrub")[0]
    upscale = ("heldout", 300, None, "", 4, False, "any", 1.5, 2, 0, 8, 1.0, "ddnm_box", "en")
    remote = zero_gpu.predict(*upscale, api_name="/super_resolve")[-1]
    local = client.predict(*upscale, api_name="/super_resolve")[-1]
    assert remote["psnr_db"] == pytest.approx(local["psnr_db"], abs=0.05)
