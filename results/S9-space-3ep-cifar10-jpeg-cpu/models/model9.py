"""TransformerUltimus, Session 9: C>C>C>U>U>U>U>FFC, 25,680 trainable parameters.

Assignment: "3 convolutions 3->16->32->48, GAP to 48, four Ultimus blocks, then FC 48->10".
Input (B, 3, H, W) CIFAR-10 images (any H, W thanks to GAP); output (B, 10) raw logits.
Each convolution is 3x3, padding 1, bias-free, followed by ReLU then BatchNorm (the reference order).
"""
import torch
from torch import nn

from .input_check import check_image_batch
from .transformer_ultimus import UltimusBlock


def conv_relu_bn(cin: int, cout: int) -> nn.Sequential:
    """Conv3x3 (padding 1, no bias) -> ReLU -> BatchNorm, as in the reference."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(cout))


class TransformerUltimus(nn.Module):
    """Three convs, GAP, ``blocks`` Ultimus blocks, bias-free FC to ``num_classes``.

    ``residual`` and ``scale`` are passed to every :class:`UltimusBlock`; the defaults are the spec.
    """

    def __init__(self, num_classes: int = 10, blocks: int = 4, residual: bool = False, scale: str = "after_softmax"):
        super().__init__()
        self.convs = nn.Sequential(conv_relu_bn(3, 16), conv_relu_bn(16, 32), conv_relu_bn(32, 48))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.ultimus = nn.Sequential(*[UltimusBlock(48, 8, scale=scale, residual=residual) for _ in range(blocks)])
        self.fc = nn.Linear(48, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, type(self).__name__)
        x = self.gap(self.convs(x)).flatten(1)  # (B, 48, H, W) -> (B, 48)
        return self.fc(self.ultimus(x))  # (B, 48) -> (B, num_classes)
