"""The model lessons' GPU calls across a ZeroGPU-like process boundary (the ``spaces`` test double).

Each call runs in a forked worker with its inputs and outputs pickled. The results must
equal the same work done in this process: finished runs, runs stopped after k steps
(rebuilt here from the streamed steps), batched runs with one member stopped, and the
lesson's own errors.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from diffusion.errors import InputError
from diffusion.lessons import text2image as t2i
from diffusion.lessons.denoising import load_denoiser
from diffusion.lessons.denoising.calls import CallingDenoiser
from diffusion.lessons.sampling import SampleRequest, calls, sample
from diffusion.lessons.text2image import calls as t2i_calls
from diffusion.models import registry
from diffusion.serving import gpu

pytestmark = pytest.mark.skipif(not (registry.available("mnist") and registry.denoiser_available()
                                     and registry.text2image_available()), reason="a shipped model is missing")




def after(n):
    seen = []
    return seen.append, (lambda: len(seen) >= n)


def assert_same_run(a, b):
    assert len(a) == len(b) and a.stopped == b.stopped
    for name in ("x_t", "x0_pred", "eps", "timesteps", "samples", "x_t_std", "labels"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)


REQUEST = SampleRequest(sampler="ddim", num_inference_steps=6, batch_size=2, digit="4", guidance_scale=2.0, seed=3)


def test_a_sampling_call_runs_in_another_process_and_returns_the_local_pixels(spaces):
    work = gpu.GpuWork(calls.run_request, {"request": REQUEST, "device": "cpu"}, gpu_s=calls.gpu_seconds(REQUEST),
                       partial=calls.rebuilt)
    seen = []
    remote = gpu.execute(work, seen.append, lambda: False)
    unet, config = registry.load_unet_model("mnist", "cpu")
    assert_same_run(remote, sample(unet, config, REQUEST, device="cpu"))
    assert [s.step for s in seen] == list(range(6))  # every step streamed, in order
    [call] = spaces.calls
    assert call["pid"] != os.getpid() and call["duration"] == gpu.duration_s(work) and not call["stopped"]


def test_stop_closes_the_gpu_call_and_the_run_is_rebuilt_as_a_local_stop_would_keep_it(spaces):
    work = gpu.GpuWork(calls.run_request, {"request": REQUEST, "device": "cpu"}, partial=calls.rebuilt)
    callback, stop = after(3)
    remote = gpu.execute(work, callback, stop)
    unet, config = registry.load_unet_model("mnist", "cpu")
    local_callback, local_stop = after(3)
    local = sample(unet, config, REQUEST, device="cpu", callback=local_callback, stop=local_stop)
    assert remote.stopped and len(remote) == 3
    assert_same_run(remote, local)
    assert spaces.calls[-1]["stopped"]  # the worker's generator was closed early


def test_a_batch_keeps_going_when_one_member_stops(spaces):
    other = SampleRequest(sampler="ddim", num_inference_steps=6, batch_size=1, digit="9", guidance_scale=1.0, seed=8)
    requests = [REQUEST, other]
    work = gpu.GpuWork(calls.run_requests, {"requests": requests, "device": "cpu"})
    first, second = [], []
    callback, stop = after(2)
    runs = gpu.execute_batch(work, [first.append, lambda info: (second.append(info), callback(info))],
                             [lambda: False, stop], lambda kw, i, steps, seconds: calls.rebuilt_member(
                                 kw["requests"][i], steps, seconds, device="cpu"))
    local_callback, local_stop = after(2)  # the same batch in this process (one network batch, the same sums)
    local = calls.run_requests(requests=requests, device="cpu", stops=[None, local_stop],
                               callback=lambda pair: local_callback(pair[1]) if pair[0] == 1 else None)
    assert_same_run(runs[0], local[0])
    assert_same_run(runs[1], local[1])
    assert not runs[0].stopped and runs[1].stopped and len(runs[1]) == 2
    assert len(first) == 6 and len(second) == 2


def gpu_call(fn, kwargs, gpu_s, partial, callback, stop):
    return gpu.execute(gpu.GpuWork(fn, kwargs, gpu_s=gpu_s, partial=partial), callback, stop)


def test_the_denoiser_calls_give_the_local_images(spaces):
    rng = np.random.default_rng(0)
    noisy = np.clip(0.5 + 0.2 * rng.standard_normal((24, 20, 3)), 0, 1)
    local = load_denoiser("cpu")
    remote = CallingDenoiser(local, "cpu", gpu_call)
    np.testing.assert_array_equal(remote.one_step(noisy, 25.0), local.one_step(noisy, 25.0))
    callback, stop = after(2)
    run = remote.multi_step(noisy, 25.0, steps=5, eta=1.0, seed=2, callback=callback, stop=stop)
    local_callback, local_stop = after(2)
    expected = local.multi_step(noisy, 25.0, steps=5, eta=1.0, seed=2, callback=local_callback, stop=local_stop)
    assert run.stopped and len(run) == 2
    np.testing.assert_array_equal(run.image, expected.image)
    np.testing.assert_array_equal(run.noisy, expected.noisy)
    assert run.taus == expected.taus and run.sigmas_255 == expected.sigmas_255
    torch.testing.assert_close(run.x_t, expected.x_t, rtol=0, atol=0)
    assert len(spaces.calls) == 2 and all(c["pid"] != os.getpid() for c in spaces.calls)


def test_text_to_image_returns_pictures_instead_of_its_vae(spaces):
    pipe = registry.load_text2image(None, "cpu")
    request = t2i.T2IRequest("a small green triangle", num_inference_steps=4, seed=2).validated(
        t2i.default_side(pipe))
    kwargs = {"ref": None, "device": "cpu", "offline": True, "request": request, "pictures": True}
    seen = []
    remote = gpu.execute(gpu.GpuWork(t2i_calls.generate, kwargs, partial=t2i_calls.rebuilt), seen.append,
                         lambda: False)
    local = t2i.generate(pipe, request)
    assert remote.decoder is None and sorted(remote.x0_pictures) == [0, 1, 2, 3]
    np.testing.assert_array_equal(np.asarray(remote.images[0]), np.asarray(local.images[0]))
    for i in range(4):
        np.testing.assert_array_equal(remote.x0_picture(remote.frame(i)), local.x0_picture(local.frame(i)))
    assert seen[0].preview is not None  # the first preview is always decoded, in the worker
    callback, stop = after(2)
    stopped = gpu.execute(gpu.GpuWork(t2i_calls.generate, kwargs, partial=t2i_calls.rebuilt), callback, stop)
    assert stopped.stopped and len(stopped) == 2 and stopped.images and 0 in stopped.x0_pictures


def test_a_lesson_error_in_the_worker_arrives_whole(spaces):
    bad = SampleRequest(num_inference_steps=0)
    with pytest.raises(InputError) as error:
        gpu.execute(gpu.GpuWork(calls.run_request, {"request": bad, "device": "cpu"}))
    assert error.value.code and "num_inference_steps" in str(error.value)
    assert spaces.calls[-1]["pid"] != os.getpid()


def test_durations_follow_the_request_within_bounds():
    short = gpu.GpuWork(calls.run_request, gpu_s=calls.gpu_seconds(REQUEST))
    long = gpu.GpuWork(calls.run_request, gpu_s=calls.gpu_seconds(SampleRequest(sampler="ddpm",
                                                                                num_inference_steps=1000,
                                                                                batch_size=64)))
    assert gpu.MIN_DURATION_S <= gpu.duration_s(short) < gpu.duration_s(long) <= gpu.MAX_DURATION_S
    assert gpu.duration_s(short) == int(np.ceil(gpu.MARGIN_S + 2 * calls.gpu_seconds(REQUEST)))
