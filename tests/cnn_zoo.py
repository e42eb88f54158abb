"""Small CNNs of the architectures users bring beyond MobileNet and ResNet, as torch modules:
each keeps the blocks and operators its family exports (tests/models/test_cnn_zoo.py).
Channel counts are small; the point is the graph each exporter writes.

- shufflenet: channel split (`chunk`: a Split node from the dynamo exporter), concat, and the
  channel shuffle (reshape, transpose, reshape);
- efficientnet: SiLU, 5x5 depthwise, squeeze-excite (pool, two 1x1 convs, sigmoid, Mul), a
  residual without activation;
- mobilenetv3: hard-swish, hard-sigmoid gates, dropout in the head;
- densenet: BatchNormalization with no conv before it, dense concats, average-pool transition;
- convnext: a 4x4 stride-4 stem, 7x7 depthwise, LayerNorm over channels (both written out
  channels-first and through permutes), GELU MLP on channels-last data, a layer scale;
- inception: 1x7 and 7x1 convs, average pooling without padding counted, three-way concat,
  dilated 3x3 convs, a pooled branch broadcast back to the map (Expand);
- yolo: LeakyRelu and PRelu activations, a stride-2 3x3 conv, nearest upsampling, skip concat.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin, cout, kernel, stride=1, groups=1, act=nn.ReLU, dilation=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, dilation * (kernel // 2), dilation=dilation,
                  groups=groups, bias=False),
        nn.BatchNorm2d(cout), act())


class ShuffleUnit(nn.Module):
    def __init__(self, channels):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            conv_bn(half, half, 1), nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False),
            nn.BatchNorm2d(half), conv_bn(half, half, 1))

    def forward(self, x):
        kept, changed = x.chunk(2, dim=1)
        y = torch.cat([kept, self.branch(changed)], 1)
        n, c, h, w = y.shape
        return y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 48, 3, 2)
        self.units = nn.Sequential(ShuffleUnit(48), ShuffleUnit(48))
        self.fc = nn.Linear(48, 10)

    def forward(self, x):
        return self.fc(self.units(self.stem(x)).mean([2, 3]))


class SqueezeExcite(nn.Module):
    def __init__(self, channels, reduced, act=nn.SiLU, gate=nn.Sigmoid):
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(channels, reduced, 1), nn.Conv2d(reduced, channels, 1)
        self.act, self.gate = act(), gate()

    def forward(self, x):
        return x * self.gate(self.expand(self.act(self.reduce(F.adaptive_avg_pool2d(x, 1)))))


class InvertedResidual(nn.Module):
    def __init__(self, channels, expand, kernel, act=nn.SiLU, gate=nn.Sigmoid):
        super().__init__()
        wide = channels * expand
        self.body = nn.Sequential(
            conv_bn(channels, wide, 1, act=act), conv_bn(wide, wide, kernel, groups=wide, act=act),
            SqueezeExcite(wide, max(4, channels // 4), act, gate),
            nn.Conv2d(wide, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        return x + self.body(x)


def _classifier(features, channels):
    return nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))


def efficientnet():
    return _classifier(nn.Sequential(conv_bn(3, 24, 3, 2, act=nn.SiLU),
                                     InvertedResidual(24, 4, 5), InvertedResidual(24, 6, 3)), 24)


class MobileNetV3(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16, 3, 2, act=nn.Hardswish),
            InvertedResidual(16, 3, 3, nn.Hardswish, nn.Hardsigmoid),
            InvertedResidual(16, 4, 5, nn.ReLU, nn.Hardsigmoid))
        self.head = nn.Sequential(nn.Linear(16, 32), nn.Hardswish(), nn.Dropout(0.2),
                                  nn.Linear(32, 10))

    def forward(self, x):
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class DenseLayer(nn.Module):
    def __init__(self, channels, growth):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth), nn.ReLU(),
            nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


def densenet():
    transition = nn.Sequential(nn.BatchNorm2d(48), nn.ReLU(), nn.Conv2d(48, 24, 1, bias=False),
                               nn.AvgPool2d(2, 2), nn.ReLU())
    return _classifier(nn.Sequential(conv_bn(3, 24, 3, 2), DenseLayer(24, 12), DenseLayer(36, 12),
                                     transition), 24)


class ChannelsFirstLayerNorm(nn.Module):
    """ConvNeXt's LayerNorm over the channels of NCHW data, written out."""

    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(channels) + 0.5)
        self.bias = nn.Parameter(torch.randn(channels) * 0.1)

    def forward(self, x):
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        return (self.weight[:, None, None] * (x - mean) / torch.sqrt(var + 1e-6)
                + self.bias[:, None, None])


class ConvNeXtBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.up, self.down = nn.Linear(channels, 4 * channels), nn.Linear(4 * channels, channels)
        self.scale = nn.Parameter(torch.rand(channels) * 0.5)

    def forward(self, x):
        y = self.depthwise(x).permute(0, 2, 3, 1)
        y = self.down(F.gelu(self.up(self.norm(y)))) * self.scale
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 4, 4), ChannelsFirstLayerNorm(32))
        self.stages = nn.Sequential(ConvNeXtBlock(32), ChannelsFirstLayerNorm(32),
                                    nn.Conv2d(32, 64, 2, 2), ConvNeXtBlock(64))
        self.norm, self.fc = nn.LayerNorm(64), nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.norm(self.stages(self.stem(x)).mean([-2, -1])))


class Inception(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 32, 3, 2)
        self.plain = conv_bn(32, 16, 1)
        self.factored = nn.Sequential(
            conv_bn(32, 16, 1), nn.Conv2d(16, 16, (1, 7), padding=(0, 3)), nn.ReLU(),
            nn.Conv2d(16, 16, (7, 1), padding=(3, 0)), nn.ReLU())
        self.pooled = nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False),
                                    conv_bn(32, 16, 1))
        self.dilated = conv_bn(48, 16, 3, dilation=2)
        self.image = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(48, 16, 1), nn.ReLU())
        self.out = nn.Conv2d(32, 10, 1)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.plain(x), self.factored(x), self.pooled(x)], 1)
        image = self.image(x).expand(-1, -1, x.shape[2], x.shape[3])
        return self.out(torch.cat([self.dilated(x), image], 1))


class Yolo(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = conv_bn(3, 16, 3, act=lambda: nn.LeakyReLU(0.1))
        self.down = conv_bn(16, 32, 3, 2, act=lambda: nn.PReLU(32))
        self.merge = conv_bn(48, 16, 3, act=lambda: nn.LeakyReLU(0.1))
        self.out = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        skip = self.first(x)
        up = F.interpolate(self.down(skip), scale_factor=2, mode="nearest")
        return self.out(self.merge(torch.cat([skip, up], 1)))


ZOO = {"shufflenet": ShuffleNet, "efficientnet": efficientnet, "mobilenetv3": MobileNetV3,
       "densenet": densenet, "convnext": ConvNeXt, "inception": Inception, "yolo": Yolo}
"""name -> constructor; every net takes [N, 3, H, W] with H and W multiples of 8."""


def build(name: str, density: float = 1.0, seed: int = 0) -> nn.Module:
    """The net in eval mode: seeded weights, BatchNorm calibrated on random batches, and each
    conv or linear weight of more than 256 elements pruned by magnitude to `density`."""
    torch.manual_seed(seed)
    model = ZOO[name]()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 32, 40))
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.weight.numel() > 256:
                weight = module.weight
                cut = int(weight.numel() * (1 - density))
                if cut:
                    threshold = weight.abs().flatten().kthvalue(cut).values
                    weight.mul_((weight.abs() > threshold).float())
    return model.eval()
