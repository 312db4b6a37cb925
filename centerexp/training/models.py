"""The networks: each returns (features, logits), features being the space the center loss acts on."""

import torch
from torch import nn

from centerexp.config import ModelConfig
from centerexp.training.conv import Conv2d


class ConvLayer(nn.Sequential):
    """Conv2d without bias (BatchNorm supplies the shift) -> BatchNorm2d -> ReLU, as in the seed.
    The Conv2d is nn.Conv2d with a choice of algorithm per input size (conv.py)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int):
        super().__init__(
            Conv2d(in_channels, out_channels, kernel_size, padding),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def _stack(widths: list[list[int]]) -> nn.Sequential:
    """ConvLayers (5x5, stride 1, pad 2) through each group of widths, MaxPool 2x2 after each group."""
    layers: list[nn.Module] = []
    for group in widths:
        for c_in, c_out in zip(group, group[1:]):
            layers.append(ConvLayer(c_in, c_out, 5, 2))
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


class ConvNet(nn.Module):
    """A ConvLayer trunk, then Linear(trunk output, feat_dim) features and Linear(feat_dim, 10) logits."""

    def __init__(self, widths: list[list[int]], trunk_out: int, feat_dim: int = 2, num_classes: int = 10):
        super().__init__()
        self.hidden_layer = _stack(widths)
        self.fc = nn.Linear(trunk_out, feat_dim)
        self.output_layer = nn.Linear(feat_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden_layer(x).flatten(1)
        # The head is tiny; keep it in fp32 under autocast so the 2-D features stay precise.
        with torch.autocast(x.device.type, enabled=False):
            features = self.fc(h.float())
            logits = self.output_layer(features)
        return features, logits


# 28x28 -> 14 -> 7 -> 3 -> 1 (deep) and 28 -> 14 -> 7 -> 3 (shallow)
DEEP_WIDTHS = [[1, 32, 64], [64, 128, 256], [256, 512, 512], [512, 256, 128, 64]]
SHALLOW_WIDTHS = [[1, 32, 64], [64, 128, 256], [256, 512, 512]]


def deep_net(feat_dim: int = 2) -> ConvNet:
    """The deep net (configs/v1_0.yaml, v1_1.yaml): nine ConvLayers and four pools, Linear(64, feat_dim)."""
    return ConvNet(DEEP_WIDTHS, 64 * 1 * 1, feat_dim)


def shallow_net(feat_dim: int = 2) -> ConvNet:
    """The shallow net (configs/v1_2.yaml): the deep net without its last three ConvLayers and last pool,
    Linear(512*3*3, feat_dim)."""
    return ConvNet(SHALLOW_WIDTHS, 512 * 3 * 3, feat_dim)


class LinearNet(nn.Module):
    """The overview document's model: Linear(784, feat_dim) features, Linear(feat_dim, 10) logits."""

    def __init__(self, feat_dim: int = 2, num_classes: int = 10):
        super().__init__()
        self.fc = nn.Linear(28 * 28, feat_dim)
        self.output_layer = nn.Linear(feat_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(x.device.type, enabled=False):
            features = self.fc(x.flatten(1).float())
            return features, self.output_layer(features)


def build_model(cfg: ModelConfig) -> nn.Module:
    builders = {"deep": deep_net, "shallow": shallow_net, "linear": LinearNet}
    return builders[cfg.arch](cfg.feat_dim)
