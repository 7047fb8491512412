"""The Ultimus block of Session 9: single-head self-attention over the 8 features of one image.

Assignment: "Create an ultimus block: K, Q, V = FC(48->8) each; AM = SoftMax(Q^T K) / sqrt(8);
Z = V * AM; Out = FC(8->48)". All four linears are bias-free (1,536 parameters per block).

The reference computed ``Q.T @ K`` on (B, 8) matrices, i.e. an 8x8 matrix summed over the
*batch*, so each image's output depended on the other images in its batch. Here the attention
matrix is an outer product per image: (B, 8, 1) @ (B, 1, 8) -> (B, 8, 8).
"""
import math

import torch
from torch import nn

SCALES = ("after_softmax", "before_softmax")


class UltimusBlock(nn.Module):
    """K, Q, V = Linear(dim -> heads_dim); AM = softmax(Q^T K) / sqrt(d) per image; Out = Linear(V @ AM).

    ``scale="after_softmax"`` follows the assignment's order (divide the softmax by sqrt(d));
    ``"before_softmax"`` is the usual softmax(Q^T K / sqrt(d)). ``residual=True`` returns x + block(x).
    """

    def __init__(self, dim: int = 48, attn_dim: int = 8, scale: str = "after_softmax", residual: bool = False):
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}; got {scale!r}")
        self.k = nn.Linear(dim, attn_dim, bias=False)
        self.q = nn.Linear(dim, attn_dim, bias=False)
        self.v = nn.Linear(dim, attn_dim, bias=False)
        self.out = nn.Linear(attn_dim, dim, bias=False)
        self.scale, self.residual = scale, residual
        self.inv_sqrt_d = 1.0 / math.sqrt(attn_dim)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The per-image attention matrix AM, shape (B, d, d)."""
        q, k = self.q(x), self.k(x)  # (B, d) each
        scores = q.unsqueeze(2) @ k.unsqueeze(1)  # (B, d, 1) @ (B, 1, d) -> (B, d, d): Q^T K of each image
        # dim=-1: each row (one query feature against the d key features) sums to 1; that is the
        # axis the reference's dim-less softmax picked for its 2-D matrix, now without the batch sum.
        if self.scale == "before_softmax":
            return torch.softmax(scores * self.inv_sqrt_d, dim=-1)  # (B, d, d)
        return torch.softmax(scores, dim=-1) * self.inv_sqrt_d  # (B, d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, dim)
        v = self.v(x)  # (B, d)
        z = (v.unsqueeze(1) @ self.attention(x)).squeeze(1)  # (B, 1, d) @ (B, d, d) -> (B, d): Z = V * AM
        out = self.out(z)  # (B, dim)
        return x + out if self.residual else out
