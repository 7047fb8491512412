"""ResNet18 for CIFAR-10, Session 7 (He et al. 2015, "Deep Residual Learning"): 11,173,962 parameters.

The CIFAR variant of kuangliu/pytorch-cifar: a 3x3 stem with no max-pool, BasicBlocks [2, 2, 2, 2]
with widths 64-128-256-512 (spatial 32-16-8-4), global average pooling, FC.
Input (B, 3, H, W); output (B, 10) raw logits.
"""
import torch
from torch import nn

from .input_check import check_image_batch


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """3x3 stem [64] -> layer1 [64] -> layer2 [128, /2] -> layer3 [256, /2] -> layer4 [512, /2] -> GAP -> FC."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._stage(64, 64, stride=1)
        self.layer2 = self._stage(64, 128, stride=2)
        self.layer3 = self._stage(128, 256, stride=2)
        self.layer4 = self._stage(256, 512, stride=2)
        self.linear = nn.Linear(512, num_classes)

    @staticmethod
    def _stage(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, type(self).__name__)
        x = torch.relu(self.bn1(self.conv1(x)))  # (B, 64, 32, 32)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512, 4, 4)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)  # (B, 512)
        return self.linear(x)  # (B, num_classes)
