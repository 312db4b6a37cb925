import pytest
import torch
from torch import nn

from centerexp.config import ModelConfig
from centerexp.training.models import ConvLayer, build_model


def test_conv_layer_is_biasless_conv_batchnorm_relu():
    layer = ConvLayer(1, 32, 5, 2)
    conv, bn, relu = layer
    assert isinstance(conv, nn.Conv2d) and conv.bias is None
    assert (conv.kernel_size, conv.stride, conv.padding) == ((5, 5), (1, 1), (2, 2))
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == 32
    assert isinstance(relu, nn.ReLU)


@pytest.mark.parametrize(
    "arch, convs, pools, fc_in",
    [("deep", 9, 4, 64), ("shallow", 6, 3, 512 * 3 * 3), ("linear", 0, 0, 784)],
)
def test_architecture_and_output_shapes(arch, convs, pools, fc_in):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, feat_dim=2))
    assert sum(isinstance(m, ConvLayer) for m in model.modules()) == convs
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == pools
    assert model.fc.in_features == fc_in and model.fc.out_features == 2
    assert (model.output_layer.in_features, model.output_layer.out_features) == (2, 10)
    features, logits = model(torch.rand(3, 1, 28, 28))
    assert features.shape == (3, 2) and logits.shape == (3, 10)


def test_deep_stack_widths_follow_the_seed():
    model = build_model(ModelConfig(arch="deep"))
    widths = [(m[0].in_channels, m[0].out_channels) for m in model.modules() if isinstance(m, ConvLayer)]
    assert widths == [
        (1, 32),
        (32, 64),
        (64, 128),
        (128, 256),
        (256, 512),
        (512, 512),
        (512, 256),
        (256, 128),
        (128, 64),
    ]


def test_feat_dim_is_configurable():
    features, logits = build_model(ModelConfig(arch="linear", feat_dim=64))(torch.rand(4, 1, 28, 28))
    assert features.shape == (4, 64) and logits.shape == (4, 10)
