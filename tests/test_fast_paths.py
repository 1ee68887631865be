"""The fast paths compute the same function: sub-pixel transposed convolution, CPU settings, batched masks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unetkit import perf
from unetkit.config import RunConfig
from unetkit.model import ConvTranspose2dSame, subpixel_conv_transpose, subpixel_selection, unet_model
from unetkit.train import build_optimizer


def _native(x: torch.Tensor, layer: ConvTranspose2dSame) -> torch.Tensor:
    h, w = x.shape[-2:]
    return F.conv_transpose2d(x, layer.weight, layer.bias, stride=2)[..., : 2 * h, : 2 * w]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(2, 5, 3, 5, 7), (1, 16, 8, 6, 8), (3, 1, 1, 1, 1), (2, 3, 4, 1, 6)])
def test_subpixel_transposed_conv_is_the_transposed_conv(shape, channels_last):
    """Forward and every gradient agree with PyTorch's transposed convolution in float64, on fresh data."""
    n, cin, cout, h, w = shape
    gen = torch.Generator().manual_seed(sum(shape) + channels_last)
    layer = ConvTranspose2dSame(cin, cout).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen, dtype=torch.float64))
        layer.bias.copy_(torch.randn(cout, generator=gen, dtype=torch.float64))
    x = torch.randn(n, cin, h, w, generator=gen, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    ref = _native(x, layer)
    out = subpixel_conv_transpose(x, layer.weight, layer.bias)
    assert out.shape == ref.shape == (n, cout, 2 * h, 2 * w)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    for a, b in zip(
        torch.autograd.grad(ref, (x, layer.weight, layer.bias), grad),
        torch.autograd.grad(out, (x, layer.weight, layer.bias), grad),
    ):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


def test_subpixel_keeps_tf_alignment_and_channels_last():
    layer = ConvTranspose2dSame(1, 1, 3, 2)
    torch.nn.init.zeros_(layer.bias)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0, 0, 0, 0] = 1.0
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 2] = 1.0
    layer.subpixel = True
    y = layer(x)
    assert y[0, 0, 2, 4] == 1.0 and y.abs().sum() == 1.0
    x = torch.rand(2, 8, 6, 8).contiguous(memory_format=torch.channels_last)
    layer = ConvTranspose2dSame(8, 4)
    layer.subpixel = True
    assert layer(x).is_contiguous(memory_format=torch.channels_last)


def test_subpixel_selection_uses_every_tap_once_and_gives_a_channels_last_kernel():
    """Each 3x3 tap lands in exactly one (phase, window position); the four phases use 4, 2, 2 and 1 taps."""
    select = subpixel_selection()
    assert select.shape == (16, 9) and set(select.unique().tolist()) == {0.0, 1.0}
    assert select.sum(0).tolist() == [1.0] * 9
    assert select.reshape(4, 4, 9).sum((1, 2)).tolist() == [4.0, 2.0, 2.0, 1.0]


def test_cpu_optimizer_is_the_fused_one():
    """One fused kernel for the optimizer step on the CPU (3x faster than foreach at the demo's batch 4)."""
    model = unet_model((32, 32, 3), n_filters=4, n_classes=3)
    for name in ("adam", "adamw"):
        config = RunConfig()
        config = replace(config, train=replace(config.train, optimizer=name))
        assert build_optimizer(model, config).defaults["fused"] is True


def test_subpixel_by_default_only_under_bf16_autocast_on_the_cpu():
    layer, x = ConvTranspose2dSame(8, 4), torch.rand(1, 8, 4, 4)
    assert not layer._use_subpixel(x)  # fp32: PyTorch's transposed convolution trains faster
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer._use_subpixel(x)  # bf16: oneDNN's transposed convolution is slow
    layer.subpixel = True
    assert layer._use_subpixel(x)


def test_whole_model_same_either_way_in_fp32_and_close_in_bf16():
    torch.manual_seed(0)
    model = unet_model((32, 48, 3), n_filters=4, n_classes=5).eval()
    x = torch.rand(2, 3, 32, 48)
    outs = {}
    try:
        for sub in (False, True):
            ConvTranspose2dSame.subpixel = sub
            with torch.no_grad():
                outs[sub] = model(x)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    outs[sub, "bf16"] = model(x).float()
    finally:
        ConvTranspose2dSame.subpixel = None
    torch.testing.assert_close(outs[True], outs[False], rtol=1e-5, atol=1e-5)
    err = (outs[True, "bf16"] - outs[False]).norm() / outs[False].norm()
    assert err < 2e-2


def test_export_trace_keeps_the_transposed_conv_node():
    layer = ConvTranspose2dSame(4, 2)
    traced = torch.jit.trace(layer, torch.rand(1, 4, 3, 5))
    assert "conv_transpose" in str(traced.graph) or "_convolution" in str(traced.graph)
    assert "pixel" not in str(traced.graph)


def test_cpu_settings_are_safe_to_repeat():
    assert perf.physical_cores() >= 1
    first = perf.tune_allocator()
    assert perf.tune_allocator() == first
    before = torch.get_num_threads()
    n = perf.set_threads()
    assert 1 <= n <= max(before, 1)
    torch.set_num_threads(before)


def test_tuned_allocator_keeps_results():
    perf.tune_cpu()
    a = np.random.default_rng(0).random((10, 1024, 1024), dtype=np.float32)  # 40 MB: over glibc default
    t = torch.from_numpy(a)
    assert float((t * 2).sum()) == pytest.approx(float(a.sum(dtype=np.float64)) * 2, rel=1e-4)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from conftest import make_blobs, tiny_config

    from unetkit import SegmentationData, fit

    images, masks = make_blobs(16, seed=2)
    data = SegmentationData.from_arrays(images, masks, (32, 32, 3), n_classes=3)
    out = tmp_path_factory.mktemp("fast") / "run"
    fit(tiny_config(epochs=1), out, train_data=data, progress=False, log=None)
    return out, images


def test_predict_array_is_predict_batch(tiny_run):
    from unetkit import Predictor

    run, images = tiny_run
    predictor = Predictor.from_run(run)
    batch = np.stack(predictor.predict_batch(list(images[:7]), batch_size=3))
    array = predictor.predict_array(images[:7], batch_size=3)
    assert array.dtype == np.uint8 and array.shape == (7, 32, 32)
    np.testing.assert_array_equal(array, batch)
    other = np.random.default_rng(0).integers(0, 255, (2, 40, 24, 3), dtype=np.uint8)  # not the model's size
    np.testing.assert_array_equal(predictor.predict_array(other), np.stack(predictor.predict_batch(list(other))))
    assert predictor.predict_array(images[:0]).shape == (0, 32, 32)


def test_compile_failure_falls_back_to_eager(monkeypatch, tiny_run):
    """A broken compiler toolchain costs a warning, not the run."""
    import torch._inductor.config as inductor_config
    from conftest import make_blobs, tiny_config

    from unetkit import SegmentationData, fit

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/c++",))
    images, masks = make_blobs(8, seed=3)
    data = SegmentationData.from_arrays(images, masks, (32, 32, 3), n_classes=3)
    result = fit(tiny_config(epochs=1, compile="on"), None, train_data=data, progress=False, log=None)
    assert np.isfinite(result.history[0]["train_loss"])


def test_auto_precision_on_the_cpu_follows_the_measured_speed(monkeypatch):
    """``auto`` takes bf16 on a CPU with bf16 instructions only where bf16 measured faster than fp32."""
    from unetkit import device as dev

    cpu = torch.device("cpu")
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(dev, "cpu_bf16_speedup", lambda: 1.8)  # the Zen 5 EPYC
    assert dev.resolve_precision("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(dev, "cpu_bf16_speedup", lambda: 0.6)  # the Xeon whose AMX was hidden
    assert dev.resolve_precision("auto", cpu) is None
    monkeypatch.setattr(dev, "cpu_bf16_speedup", lambda: dev.BF16_MIN_SPEEDUP - 0.01)  # a near tie: fp32
    assert dev.resolve_precision("auto", cpu) is None
    assert dev.resolve_precision("bf16", cpu) is torch.bfloat16  # asked for: never measured away
    assert dev.precision_note("auto", cpu) == " (bf16 measured 1.09x fp32's speed here)"  # the training log
    assert dev.precision_note("fp32", cpu) == ""

    def no_probe() -> float:
        raise AssertionError("the probe must not run on a CPU without bf16 instructions")

    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(dev, "cpu_bf16_speedup", no_probe)
    assert dev.resolve_precision("auto", cpu) is None
    assert dev.precision_note("auto", cpu) == ""  # nothing measured, nothing to say


def test_bf16_probe_measures_once_and_leaves_the_rng_alone():
    from unetkit.device import cpu_bf16_speedup

    cpu_bf16_speedup.cache_clear()
    state = torch.random.get_rng_state()
    speedup = cpu_bf16_speedup()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert 0.01 < speedup < 100 and cpu_bf16_speedup() == speedup  # cached: measured once per process
