"""The seed's network, layer for layer: parameter counts, shapes, initialisation, size checks."""

from __future__ import annotations

import math

import pytest
import torch

from unetkit.model import (
    ConvTranspose2dSame,
    count_parameters,
    fcn_model,
    format_summary,
    layer_summary,
    unet_model,
)

# The Keras seed's model.summary() at the defaults: (layer, output shape (H, W, C), params)
KERAS_SUMMARY = [
    ("conv2d", (96, 128, 32), 896),
    ("conv2d_1", (96, 128, 32), 9248),
    ("max_pooling2d", (48, 64, 32), 0),
    ("conv2d_2", (48, 64, 64), 18496),
    ("conv2d_3", (48, 64, 64), 36928),
    ("max_pooling2d_1", (24, 32, 64), 0),
    ("conv2d_4", (24, 32, 128), 73856),
    ("conv2d_5", (24, 32, 128), 147584),
    ("max_pooling2d_2", (12, 16, 128), 0),
    ("conv2d_6", (12, 16, 256), 295168),
    ("conv2d_7", (12, 16, 256), 590080),
    ("dropout", (12, 16, 256), 0),
    ("max_pooling2d_3", (6, 8, 256), 0),
    ("conv2d_8", (6, 8, 512), 1180160),
    ("conv2d_9", (6, 8, 512), 2359808),
    ("dropout_1", (6, 8, 512), 0),
    ("conv2d_transpose", (12, 16, 256), 1179904),
    ("concatenate", (12, 16, 512), 0),
    ("conv2d_10", (12, 16, 256), 1179904),
    ("conv2d_11", (12, 16, 256), 590080),
    ("conv2d_transpose_1", (24, 32, 128), 295040),
    ("concatenate_1", (24, 32, 256), 0),
    ("conv2d_12", (24, 32, 128), 295040),
    ("conv2d_13", (24, 32, 128), 147584),
    ("conv2d_transpose_2", (48, 64, 64), 73792),
    ("concatenate_2", (48, 64, 128), 0),
    ("conv2d_14", (48, 64, 64), 73792),
    ("conv2d_15", (48, 64, 64), 36928),
    ("conv2d_transpose_3", (96, 128, 32), 18464),
    ("concatenate_3", (96, 128, 64), 0),
    ("conv2d_16", (96, 128, 32), 18464),
    ("conv2d_17", (96, 128, 32), 9248),
    ("conv2d_18", (96, 128, 32), 9248),
    ("conv2d_19", (96, 128, 23), 759),
]


def test_default_parameter_count_is_the_seeds():
    assert count_parameters(unet_model()) == 8_640_471


def test_every_layer_matches_the_keras_summary():
    rows = layer_summary(unet_model())
    assert rows[0].output_shape == (96, 128, 3)
    got = [(r.name, r.output_shape, r.params) for r in rows[1:]]
    assert got == KERAS_SUMMARY


def test_forward_shape_and_logits():
    model = unet_model((32, 48, 3), n_filters=4, n_classes=5).eval()
    out = model(torch.rand(2, 3, 32, 48))
    assert out.shape == (2, 5, 32, 48)
    assert out.dtype == torch.float32
    assert (out < 0).any(), "logits, not probabilities or ReLU outputs"


def test_grayscale_input():
    model = unet_model((32, 32, 1), n_filters=4, n_classes=2)
    assert model(torch.rand(1, 1, 32, 32)).shape == (1, 2, 32, 32)
    assert model.encoder[0].conv1.weight.shape == (4, 1, 3, 3)


@pytest.mark.parametrize("size,hint", [((100, 128, 3), "96 or 112"), ((96, 130, 3), "128 or 144")])
def test_size_not_divisible_by_16_names_nearest_sizes(size, hint):
    with pytest.raises(ValueError, match=hint):
        unet_model(size)


def test_forward_rejects_bad_size_and_channels():
    model = unet_model((32, 32, 3), n_filters=4, n_classes=2)
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.rand(1, 3, 40, 32))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(torch.rand(1, 1, 32, 32))


def test_transposed_conv_doubles_exactly_with_tf_alignment():
    layer = ConvTranspose2dSame(1, 1, 3, 2)
    torch.nn.init.zeros_(layer.bias)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0, 0, 0, 0] = 1.0  # kernel tap (0, 0)
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 2] = 1.0
    y = layer(x)
    assert y.shape == (1, 1, 8, 8)
    # TensorFlow 'same' places input pixel i with tap k at output 2i + k
    assert y[0, 0, 2, 4] == 1.0 and y.abs().sum() == 1.0


def test_keras_initialisation():
    torch.manual_seed(0)
    model = unet_model()
    conv = model.encoder[3].conv2  # 3x3x256 -> 256, He-normal
    fan_in = 3 * 3 * 256
    std = math.sqrt(2 / fan_in)
    assert conv.weight.std().item() == pytest.approx(std, rel=0.03)
    assert conv.weight.abs().max().item() <= 2 * std / 0.87962566103423978 + 1e-6  # truncated at 2 sigma
    for layer in [model.decoder[0].up, model.conv10]:  # Keras defaults: Glorot uniform, zero bias
        fan_in = layer.weight[0].numel() if not isinstance(layer, ConvTranspose2dSame) else layer.out_channels * 9
        fan_out = (
            layer.weight.shape[0] * 9
            if isinstance(layer, ConvTranspose2dSame)
            else layer.out_channels * layer.weight[0, 0].numel()
        )
        limit = math.sqrt(6 / (fan_in + fan_out))
        assert layer.weight.abs().max().item() <= limit
        assert layer.weight.abs().max().item() > 0.9 * limit
    assert all((m.bias == 0).all() for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_dropout_only_in_the_deepest_two_blocks():
    model = unet_model()
    assert [b.dropout is not None for b in model.encoder] == [False, False, False, True, True]
    assert model.encoder[3].dropout.p == 0.3
    assert model.encoder[4].pool is None


def test_options_beyond_the_seed():
    deep = unet_model((64, 64, 3), n_filters=4, n_classes=2, depth=6)
    assert deep(torch.rand(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    with pytest.raises(ValueError, match="divisible by 32"):
        unet_model((48, 48, 3), depth=6)
    bn = unet_model((32, 32, 3), n_filters=4, n_classes=2, batch_norm=True)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules())
    assert unet_model(dropout=0.0).encoder[3].dropout is None


def test_fcn_baseline_single_upsampling():
    model = fcn_model((32, 32, 3), n_filters=4, n_classes=3)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    ups = [m for m in model.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(ups) == 1 and ups[0].stride == (16, 16)
    assert not hasattr(model, "decoder")


def test_format_summary_has_total():
    text = format_summary(unet_model())
    assert "Total params: 8,640,471" in text and "conv2d_transpose (Conv2DTranspose)" in text
