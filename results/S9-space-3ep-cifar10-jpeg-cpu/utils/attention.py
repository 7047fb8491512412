"""What the Ultimus blocks of Session 9 attend to: their attention matrices, how far those are from
uniform, and how many directions each block's output really uses.

The assignment: "AM = SoftMax(Q^T K) / sqrt(8); Z = V * AM". When Q^T K is small, every row of AM is
close to uniform; then every component of Z is the same number (the mean of V, scaled), so the block
passes on a one-dimensional signal. These measurements show whether, and when, a model leaves that state:

- :func:`recording` reads each block's AM (B, 8, 8) and output (B, 48) with forward hooks, without
  changing any output or parameter;
- :func:`row_entropy`: mean entropy (nats) of the AM rows, each normalised to sum 1; uniform = ln 8;
- :func:`effective_rank`: exp of the entropy of the normalised singular values of the centred outputs
  (Roy and Vetterli, 2007): 1 for a one-dimensional signal, up to 48;
- :func:`attention_stats` measures all of it over a test loader, :func:`entropy_per_block` on one fixed
  batch (the run stores it in the history after every epoch).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from torch import nn


def ultimus_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, block) of every module with an ``attention(x)`` method (the Ultimus blocks), in forward order."""
    return [(name, m) for name, m in model.named_modules() if name and callable(getattr(m, "attention", None))]


@dataclass
class Recording:
    """Per block, the batches seen while recording: attention (B, d, d), block input and output (B, dim)."""

    names: list[str]
    attention: list[list[torch.Tensor]] = field(default_factory=list)
    inputs: list[list[torch.Tensor]] = field(default_factory=list)
    outputs: list[list[torch.Tensor]] = field(default_factory=list)

    def cat(self, what: str) -> list[torch.Tensor]:
        """One tensor per block, the recorded batches concatenated along the batch axis."""
        return [torch.cat(batches) for batches in getattr(self, what)]


@contextlib.contextmanager
def recording(model: nn.Module):
    """Within the block, every forward pass of ``model`` appends each Ultimus block's AM, input and output
    (detached, fp32, on the CPU) to the yielded :class:`Recording`. The hooks return nothing, so the
    model's outputs are unchanged; they are removed on exit."""
    blocks = ultimus_blocks(model)
    rec = Recording([n for n, _ in blocks], [[] for _ in blocks], [[] for _ in blocks], [[] for _ in blocks])

    def hook(i):
        def save(block, inputs, output):
            x = inputs[0].detach()
            with torch.no_grad():
                rec.attention[i].append(block.attention(x).float().cpu())  # (B, d, d), recomputed from x
            rec.inputs[i].append(x.float().cpu())
            rec.outputs[i].append(output.detach().float().cpu())
        return save

    handles = [block.register_forward_hook(hook(i)) for i, (_, block) in enumerate(blocks)]
    try:
        yield rec
    finally:
        for h in handles:
            h.remove()


def row_entropy(am: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each AM row normalised to sum 1 (the spec's rows sum to 1/sqrt(d)), averaged over
    rows: (..., d, d) -> (...). A uniform row gives ln d (ln 8 = 2.079); a one-hot row gives 0."""
    p = am / am.sum(-1, keepdim=True)  # (..., d, d)
    return -(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean(-1)


def effective_rank(outputs: torch.Tensor) -> float:
    """exp(entropy of the singular values of the centred (N, D) outputs, normalised to sum 1): 1.0 for
    outputs that vary along one direction only, D for outputs spread evenly over D directions."""
    s = torch.linalg.svdvals((outputs - outputs.mean(0)).double())  # (min(N, D),)
    p = s / s.sum().clamp_min(1e-300)
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-300))).sum()))


def variance_shares(outputs: torch.Tensor) -> list[float]:
    """Share of the centred outputs' variance along each principal direction, largest first (sums to 1)."""
    s2 = torch.linalg.svdvals((outputs - outputs.mean(0)).double()) ** 2
    return (s2 / s2.sum().clamp_min(1e-300)).tolist()


def _forward(model: nn.Module, batches, device) -> None:
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for x in batches:
                model(x.to(device))
    finally:
        model.train(was_training)


def entropy_per_block(model: nn.Module, images: torch.Tensor) -> list[float]:
    """Mean AM row entropy (nats) of each Ultimus block on ``images`` (normalised, B x 3 x H x W), in eval
    mode, fp32, no gradients; the model's mode is restored. [] for a model without Ultimus blocks."""
    with recording(model) as rec:
        _forward(model, [images], next(model.parameters()).device)
    return [round(float(row_entropy(am).mean()), 5) for am in rec.cat("attention")]


@dataclass
class AttentionStats:
    """Over a test set: per block the mean AM (d, d), per class (actual label) the mean AM, the mean row
    entropy, and the effective rank and top variance share of the block's input and output (N, dim)."""

    blocks: list[str]
    mean_am: torch.Tensor  # (blocks, d, d)
    class_am: torch.Tensor  # (blocks, classes, d, d)
    entropy: list[float]  # per block, nats; ln d = uniform
    rank_in: list[float]  # effective rank of each block's input
    rank_out: list[float]  # ... and of its output
    top_share_out: list[float]  # variance share of the output's first principal direction
    spectra_out: list[list[float]]  # every variance share of each output, largest first
    spectrum_in: list[float]  # the same for the first block's input (the GAP features)
    images: int

    def table(self) -> str:
        """One line per block, as printed in the log and the report."""
        d = self.mean_am.shape[-1]
        lines = [f"attention over {self.images} test images (row entropy: ln {d} = {math.log(d):.3f} is uniform)",
                 f"{'block':<10} {'row entropy':>11} {'eff. rank in':>12} {'eff. rank out':>13} {'top direction':>13}"]
        lines += [f"{name:<10} {h:>11.3f} {ri:>12.2f} {ro:>13.2f} {100 * t:>12.1f}%" for name, h, ri, ro, t in
                  zip(self.blocks, self.entropy, self.rank_in, self.rank_out, self.top_share_out)]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain numbers for metrics.json (the matrices rounded to 4 decimals)."""
        return {"blocks": self.blocks, "images": self.images, "entropy": self.entropy, "rank_in": self.rank_in,
                "rank_out": self.rank_out, "top_share_out": self.top_share_out,
                "mean_am": self.mean_am.round(decimals=4).tolist()}


def attention_stats(model: nn.Module, loader, device, num_classes: int = 10) -> AttentionStats:
    """:class:`AttentionStats` of ``model`` over every batch of ``loader`` (images, labels), in eval mode, fp32."""
    labels = []

    def images():
        for x, y in loader:
            labels.append(y)
            yield x

    with recording(model) as rec:
        _forward(model, images(), device)
    if not rec.names:
        raise ValueError(f"{type(model).__name__} has no Ultimus blocks (modules with an attention(x) method)")
    y = torch.cat(labels)  # (N,)
    ams, ins, outs = rec.cat("attention"), rec.cat("inputs"), rec.cat("outputs")  # per block (N, d, d), (N, dim)
    class_am = torch.stack([torch.stack([am[y == c].mean(0) if (y == c).any() else torch.full(am.shape[1:], math.nan)
                                         for c in range(num_classes)]) for am in ams])  # (blocks, classes, d, d)
    return AttentionStats(
        blocks=rec.names, mean_am=torch.stack([am.mean(0) for am in ams]), class_am=class_am,
        entropy=[round(float(row_entropy(am).mean()), 5) for am in ams],
        rank_in=[round(effective_rank(x), 3) for x in ins], rank_out=[round(effective_rank(o), 3) for o in outs],
        top_share_out=[round(variance_shares(o)[0], 5) for o in outs],
        spectra_out=[variance_shares(o) for o in outs], spectrum_in=variance_shares(ins[0]), images=len(y))
