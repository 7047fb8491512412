"""Custom ResNet of Session 8 (the ResNet-9 of davidcpage/cifar10-fast): 6,573,130 parameters.

Assignment: "PrepLayer Conv 3x3 [64]; Layer1 X = Conv 3x3 -> MaxPool2D -> BN -> ReLU [128],
R1 = ResBlock((Conv-BN-ReLU-Conv-BN-ReLU))(X) [128], Add(X, R1); Layer2 Conv 3x3 -> MaxPool2D ->
BN -> ReLU [256]; Layer3 as Layer1 [512]; MaxPooling with kernel size 4; FC layer".
Input (B, 3, 32, 32); output (B, 10) raw logits. Convolutions are bias-free; the FC has a bias.
"""
import torch
from torch import nn

from .input_check import check_image_batch


def conv_bn_relu(cin: int, cout: int, pool: bool = False) -> nn.Sequential:
    """Conv3x3 s1 p1 [-> MaxPool2d(2)] -> BN -> ReLU."""
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.BatchNorm2d(cout), nn.ReLU())


class ResBlock(nn.Module):
    """(Conv-BN-ReLU-Conv-BN-ReLU)(X); the caller adds X."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(channels, channels), conv_bn_relu(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class CustomResNet(nn.Module):
    """prep [64, 32x32] -> layer1 + res1 [128, 16x16] -> layer2 [256, 8x8] -> layer3 + res3 [512, 4x4] -> pool -> fc.

    ``logit_scale`` multiplies the logits (cifar10-fast uses 0.125); 1.0 is the plain assignment.
    """

    def __init__(self, num_classes: int = 10, logit_scale: float = 1.0):
        super().__init__()
        self.prep = conv_bn_relu(3, 64)
        self.layer1, self.res1 = conv_bn_relu(64, 128, pool=True), ResBlock(128)
        self.layer2 = conv_bn_relu(128, 256, pool=True)
        self.layer3, self.res3 = conv_bn_relu(256, 512, pool=True), ResBlock(512)
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(512, num_classes)
        self.logit_scale = logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, type(self).__name__, size=32)
        x = self.prep(x)  # (B, 64, 32, 32)
        x = self.layer1(x)  # (B, 128, 16, 16)
        x = x + self.res1(x)
        x = self.layer2(x)  # (B, 256, 8, 8)
        x = self.layer3(x)  # (B, 512, 4, 4)
        x = x + self.res3(x)
        x = self.pool(x).flatten(1)  # (B, 512)
        return self.fc(x) * self.logit_scale  # (B, num_classes)
