"""Lesson 7's inpainting and super-resolution GPU calls across a ZeroGPU-like process boundary.

With the ``spaces`` test double each call runs in a forked worker, its inputs and outputs
pickled. A finished run must equal the same run made in this process, and a run stopped
after k steps, rebuilt here from the streamed steps, must equal the run a local Stop at
step k keeps: the same frames, the same last x, the same numbers.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from diffusion.lessons.applications import inpaint as inpainting
from diffusion.lessons.applications import restore_calls as calls
from diffusion.lessons.applications import superres
from diffusion.models import registry
from diffusion.reverse import StepInfo
from diffusion.serving import gpu

pytestmark = pytest.mark.skipif(not registry.available("mnist"), reason="the digit model is not installed")




def after(n):
    seen = []
    return seen.append, (lambda: len(seen) >= n)


def digit() -> np.ndarray:
    rng = np.random.default_rng(4)
    picture = np.zeros((28, 28), np.float32)
    picture[6:22, 11:17] = 0.9 + 0.1 * rng.random((16, 6))  # a bar, a "1"
    return picture


INPAINT = inpainting.InpaintRequest(image=digit(), mask=inpainting.preset_mask("top"), digit=1, fills=2, seed=3,
                                    num_inference_steps=4, resample=2).validated(1000)
SUPERRES = superres.SuperResRequest(image=digit(), factor=4, digit=None, fills=2, seed=5,
                                    num_inference_steps=5).validated(1000)


def assert_same_run(a, b, extra=()):
    assert len(a) == len(b) and a.stopped == b.stopped and a.request == b.request
    for name in ("x_t", "x0_pred", "eps", "timesteps", "alpha_bar", "samples", "labels", *extra):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)
    assert a.seeds == b.seeds and a.device == b.device and a.precision == b.precision


def local_inpaint(**kwargs):
    unet, config = registry.load_unet_model("mnist", "cpu")
    return inpainting.inpaint(unet, config, INPAINT, device="cpu", **kwargs)


def local_super_resolve(**kwargs):
    unet, config = registry.load_unet_model("mnist", "cpu")
    return superres.super_resolve(unet, config, SUPERRES, device="cpu", **kwargs)


def test_a_finished_inpaint_call_in_another_process_gives_the_local_pixels(spaces):
    work = gpu.GpuWork(calls.inpaint_call, {"request": INPAINT, "device": "cpu"}, gpu_s=calls.gpu_seconds(INPAINT),
                       partial=calls.rebuilt_inpaint)
    seen = []
    remote = gpu.execute(work, seen.append, lambda: False)
    local = local_inpaint()
    assert_same_run(remote, local)
    assert remote.network_calls == local.network_calls == 3 * 2 + 1 and not remote.stopped
    assert [s.step for s in seen] == [0, 1, 2, 3] and all(s.x_next is not None for s in seen)
    [call] = spaces.calls
    assert call["pid"] != os.getpid() and call["duration"] == gpu.duration_s(work) and not call["stopped"]


@pytest.mark.parametrize("k", [1, 2])
def test_a_stopped_inpaint_call_is_rebuilt_as_a_local_stop_keeps_it(spaces, k):
    work = gpu.GpuWork(calls.inpaint_call, {"request": INPAINT, "device": "cpu"}, partial=calls.rebuilt_inpaint)
    callback, stop = after(k)
    remote = gpu.execute(work, callback, stop)
    local_callback, local_stop = after(k)
    local = local_inpaint(callback=local_callback, stop=local_stop)
    assert remote.stopped and len(remote) == k
    assert_same_run(remote, local)
    assert remote.network_calls == local.network_calls == 2 * k
    np.testing.assert_array_equal(remote.pictures_uint8(), local.pictures_uint8())
    assert remote.hole_psnr() == local.hole_psnr()
    assert spaces.calls[-1]["stopped"]  # the worker's generator was closed early


def test_a_finished_super_resolution_call_gives_the_local_pixels_and_numbers(spaces):
    work = gpu.GpuWork(calls.super_resolve_call, {"request": SUPERRES, "device": "cpu"},
                       gpu_s=calls.gpu_seconds(SUPERRES), partial=calls.rebuilt_super_resolve)
    seen = []
    remote = gpu.execute(work, seen.append, lambda: False)
    local = local_super_resolve()
    assert_same_run(remote, local, extra=("x0_network",))
    assert all(isinstance(s, superres.SuperResStep) and s.x0_network.device.type == "cpu" for s in seen)
    a, b = remote.result(), local.result()
    np.testing.assert_array_equal(a.pictures, b.pictures)
    assert a.psnr == b.psnr and a.consistency == b.consistency


def test_a_stopped_super_resolution_call_is_rebuilt_as_a_local_stop_keeps_it(spaces):
    work = gpu.GpuWork(calls.super_resolve_call, {"request": SUPERRES, "device": "cpu"},
                       partial=calls.rebuilt_super_resolve)
    callback, stop = after(3)
    remote = gpu.execute(work, callback, stop)
    local_callback, local_stop = after(3)
    local = local_super_resolve(callback=local_callback, stop=local_stop)
    assert remote.stopped and len(remote) == 3
    assert_same_run(remote, local, extra=("x0_network",))
    assert remote.nbytes == local.nbytes > 0
    assert remote.summary()["psnr_db"] == local.summary()["psnr_db"]
    assert spaces.calls[-1]["stopped"]


def test_rebuilding_needs_the_steps_x_next():
    info = StepInfo(step=0, total=4, t=999, alpha_bar=0.1, x_t=torch.zeros(2, 1, 28, 28),
                    x0_pred=torch.zeros(2, 1, 28, 28), eps_pred=torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError):
        calls.rebuilt_inpaint({"request": INPAINT, "device": "cpu"}, [info], 0.1)
    with pytest.raises(ValueError):
        calls.rebuilt_inpaint({"request": INPAINT, "device": "cpu"}, [], 0.1)
    with_next = StepInfo(**{**vars(info), "x_next": torch.zeros(2, 1, 28, 28)})
    with pytest.raises(ValueError):  # super-resolution also needs the network's own x̂₀ of each step
        calls.rebuilt_super_resolve({"request": SUPERRES, "device": "cpu"}, [with_next], 0.1)


def test_costs_count_the_network_calls_and_pictures():
    assert calls.network_calls(INPAINT) == 7 and calls.network_calls(INPAINT, 2) == 4
    assert calls.network_calls(SUPERRES) == 5
    assert calls.images_per_call(INPAINT) == 4  # a class under guidance 1.5: conditional and unconditional
    assert calls.images_per_call(SUPERRES) == 2  # any class: one unconditional call
    assert calls.gpu_seconds(INPAINT) == pytest.approx(7 * (0.01 + 2e-4 * 4))
    assert 0 < calls.cpu_seconds(SUPERRES) < calls.cpu_seconds(INPAINT)
