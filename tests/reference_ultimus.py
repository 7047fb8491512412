"""The original solution's Ultimus block, kept only to prove the doctor and the per-sample test catch it.

It computes ``Q.T @ K`` on (B, 8) matrices: an 8x8 matrix summed over the *batch*, so every
image's output depends on the other images in its batch. Do not use it for anything else.
"""
import math

import torch
from torch import nn

from models.model9 import TransformerUltimus


class BatchMixingUltimus(nn.Module):
    def __init__(self, dim: int = 48, attn_dim: int = 8):
        super().__init__()
        self.k, self.q, self.v = (nn.Linear(dim, attn_dim, bias=False) for _ in range(3))
        self.out = nn.Linear(attn_dim, dim, bias=False)
        self.attn_dim = attn_dim

    def forward(self, x):  # (B, 48)
        q, k, v = self.q(x), self.k(x), self.v(x)  # (B, 8)
        am = torch.softmax(q.T @ k, dim=1) / math.sqrt(self.attn_dim)  # (8, B) @ (B, 8) -> (8, 8): mixes the batch
        return self.out(v @ am)  # (B, 8) @ (8, 8) -> (B, 8) -> (B, 48)


def seed_model() -> TransformerUltimus:
    """TransformerUltimus with the original solution's batch-mixing blocks (same parameter count)."""
    model = TransformerUltimus()
    model.ultimus = nn.Sequential(*[BatchMixingUltimus() for _ in range(4)])
    return model
