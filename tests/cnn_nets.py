"""The CNN architectures of tests/cnn_models.py, as torch modules: MobileNet-v1
(depthwise-separable blocks), MobileNet-v2 (inverted residuals with a residual Add) and ResNet
(basic or bottleneck blocks, max-pool stem), each ending in global average pooling and a
Linear head. Laid out as the papers (and torchvision) lay them out, at any width: `channels`
rounds a scaled channel count.
"""

from __future__ import annotations

import torch
from torch import nn


def _activation(name: str) -> nn.Module:
    if name == "relu6":
        return nn.ReLU6()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"activation {name!r}: choose relu6 or relu")


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
            activation: str | None = "relu") -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if activation:
        layers.append(_activation(activation))
    return nn.Sequential(*layers)


class Classifier(nn.Module):
    """features -> global average pool -> flatten -> Linear."""

    def __init__(self, features: nn.Module, channels: int, classes: int):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


# (output channels, stride) of each depthwise-separable block (Howard et al. 2017, table 1)
MOBILENET_V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                       *[(512, 1)] * 5, (1024, 2), (1024, 1)]


def mobilenet_v1(spec, channels) -> nn.Module:
    act = spec.activation
    cin = channels(32 * spec.width)
    layers = [conv_bn(3, cin, 3, 2, activation=act)]
    for cout, stride in MOBILENET_V1_BLOCKS:
        cout = channels(cout * spec.width)
        layers += [conv_bn(cin, cin, 3, stride, groups=cin, activation=act),
                   conv_bn(cin, cout, 1, activation=act)]
        cin = cout
    return Classifier(nn.Sequential(*layers), cin, spec.classes)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int, activation: str):
        super().__init__()
        hidden = cin * expansion
        layers = [conv_bn(cin, hidden, 1, activation=activation)] if expansion != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden, activation=activation),
                   conv_bn(hidden, cout, 1, activation=None)]  # linear bottleneck
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


# (expansion t, output channels c, repeats n, first stride s) (Sandler et al. 2018, table 2)
MOBILENET_V2_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def mobilenet_v2(spec, channels) -> nn.Module:
    act = spec.activation
    cin = channels(32 * spec.width)
    layers = [conv_bn(3, cin, 3, 2, activation=act)]
    for expansion, cout, repeats, stride in MOBILENET_V2_STAGES:
        cout = channels(cout * spec.width)
        for index in range(repeats):
            layers.append(InvertedResidual(cin, cout, stride if index == 0 else 1, expansion,
                                           act))
            cin = cout
    last = channels(1280 * max(1.0, spec.width))
    layers.append(conv_bn(cin, last, 1, activation=act))
    return Classifier(nn.Sequential(*layers), last, spec.classes)


class ResidualBlock(nn.Module):
    """Basic (two 3x3 convs) or bottleneck (1x1, 3x3 with the stride, 1x1 to 4x the width);
    a 1x1 conv with BatchNorm on the shortcut where the shape changes."""

    def __init__(self, cin: int, width: int, stride: int, bottleneck: bool):
        super().__init__()
        cout = 4 * width if bottleneck else width
        if bottleneck:
            self.body = nn.Sequential(conv_bn(cin, width, 1), conv_bn(width, width, 3, stride),
                                      conv_bn(width, cout, 1, activation=None))
        else:
            self.body = nn.Sequential(conv_bn(cin, width, 3, stride),
                                      conv_bn(width, cout, 3, activation=None))
        self.shortcut = (conv_bn(cin, cout, 1, stride, activation=None)
                         if stride != 1 or cin != cout else nn.Identity())
        self.relu = nn.ReLU()
        self.out_channels = cout

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


def resnet(spec, channels) -> nn.Module:
    bottleneck = spec.arch == "resnet-bottleneck"
    cin = channels(64 * spec.width)
    layers = [conv_bn(3, cin, 7, 2), nn.MaxPool2d(3, 2, 1)]
    for stage, depth in enumerate(spec.depths):
        width = channels(64 * 2 ** stage * spec.width)
        for index in range(depth):
            block = ResidualBlock(cin, width, 2 if stage > 0 and index == 0 else 1, bottleneck)
            layers.append(block)
            cin = block.out_channels
    return Classifier(nn.Sequential(*layers), cin, spec.classes)


ARCHITECTURES = {"mobilenet-v1": mobilenet_v1, "mobilenet-v2": mobilenet_v2,
                 "resnet-basic": resnet, "resnet-bottleneck": resnet}
