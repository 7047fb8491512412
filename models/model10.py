"""ViT, Session 10: the class network for 32x32 images, 239,562 trainable parameters at the defaults.

Convolutional patch embedding (3x3 conv 3 -> 32, GELU, then a ``patch`` x ``patch`` conv with stride ``patch``
to ``dim`` channels), a class token and learned position embeddings, ``depth`` pre-norm blocks (LayerNorm ->
multi-head self-attention, LayerNorm -> MLP with GELU, each with a residual), then LayerNorm and Linear on the
class token. Input (B, 3, 32, 32); output (B, num_classes) raw logits. Each image attends only to its own
tokens.

Attention is ``softmax(q k^T / sqrt(d)) v``, computed one of two ways with the same result (tests/test_vit.py):
``fused=True`` calls ``F.scaled_dot_product_attention``, ``fused=False`` writes it as matmul, softmax, matmul.
The default (``None``) writes it out under bf16 autocast on the CPU and fuses it everywhere else, as measured with
bench/vit_attention.py (train steps, batch 128): on a 2-core AVX-512 BF16 CPU in bf16 the written-out attention
ran 642 img/s against 222 fused (the fused backward took half the step); on a 2-core AVX2 CPU in fp32 fused was
1.06-1.12x faster; on CUDA the fused kernel is the one built for it. Either way the attention figures see the
weights (``utils.softmax_attention`` captures both).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .input_check import check_image_batch


class Attention(nn.Module):
    """Multi-head self-attention over (B, N, dim) tokens, ``heads`` heads of ``dim // heads``."""

    def __init__(self, dim: int, heads: int, fused: bool | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads, self.fused = heads, fused
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, d)
        fused = self.fused
        if fused is None:  # measured (bench/vit_attention.py): the fused kernel's bf16 backward is slow on the CPU
            fused = not (x.device.type == "cpu" and torch.is_autocast_enabled("cpu"))
        if fused:
            out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d)
        else:
            weights = torch.softmax(q @ k.transpose(-2, -1) * (1 / math.sqrt(q.shape[-1])), dim=-1)  # (B, h, N, N)
            out = weights @ v  # (B, h, N, d)
        return self.proj(out.transpose(1, 2).reshape(b, n, dim))  # (B, N, dim)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with ``mlp_ratio`` x ``dim`` hidden."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, fused: bool | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, fused)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))  # (B, N, dim)
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """The S10 ViT (see the module's docstring); ``fused`` picks the attention's implementation."""

    def __init__(self, num_classes: int = 10, image_size: int = 32, patch: int = 4, dim: int = 64, depth: int = 6,
                 heads: int = 4, mlp_ratio: float = 2.0, stem: int = 32, fused: bool | None = None):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch}")
        self.patch_embed = nn.Sequential(nn.Conv2d(3, stem, 3, padding=1), nn.GELU(),
                                         nn.Conv2d(stem, dim, patch, stride=patch))
        self.image_size = image_size
        tokens = (image_size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, fused) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, type(self).__name__, self.image_size)
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, 3, 32, 32) -> (B, dim, 8, 8) -> (B, 64, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, dim)
        x = torch.cat([cls, x], 1) + self.pos_embed  # (B, 65, dim)
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])  # the class token: (B, dim) -> (B, num_classes)
