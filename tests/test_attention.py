"""utils.attention: reading the Ultimus attention changes nothing, measures per image, and its numbers
mean what they say (uniform = ln 8, one direction = rank 1); the S9 run stores and draws them."""
import math

import pytest
import torch

from models.model9 import TransformerUltimus
from utils.attention import (attention_stats, effective_rank, entropy_per_block, recording, row_entropy,
                             ultimus_blocks)
from utils.attention_plots import attention_entropy_figure, attention_maps_figure

VARIANTS = {"spec": {}, "residual": {"residual": True}, "prescaled-residual": {"scale": "before_softmax", "residual": True}}


def _trained_like(kw, seed=0):
    """A network whose attention is far from uniform: Q and K weights scaled up so Q^T K is large (in every
    block only with a residual path: a fresh spec network's signal fades after the first block)."""
    torch.manual_seed(seed)
    model = TransformerUltimus(**kw).eval()
    with torch.no_grad():
        for _, block in ultimus_blocks(model):
            block.q.weight.mul_(30)
            block.k.weight.mul_(30)
    return model


@pytest.mark.parametrize("variant,row_sum", [("spec", 1 / math.sqrt(8)), ("prescaled-residual", 1.0)])
def test_captured_rows_sum_to_the_assignment_s_scale(variant, row_sum):
    model = _trained_like(VARIANTS[variant])
    with recording(model) as rec, torch.no_grad():
        model(torch.randn(5, 3, 32, 32))
    assert rec.names == ["ultimus.0", "ultimus.1", "ultimus.2", "ultimus.3"]
    for am in rec.cat("attention"):
        assert am.shape == (5, 8, 8)
        torch.testing.assert_close(am.sum(-1), torch.full((5, 8), row_sum))


def test_reading_the_attention_changes_no_output_and_no_parameter():
    model = _trained_like(VARIANTS["spec"])
    x = torch.randn(7, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        plain = model(x)
        with recording(model) as rec:
            hooked = model(x)
        after = model(x)
    assert torch.equal(plain, hooked) and torch.equal(plain, after)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks for _, m in ultimus_blocks(model))  # removed on exit
    torch.testing.assert_close(rec.cat("outputs")[-1] @ model.fc.weight.T, plain)  # the last block's output feeds fc


def test_an_image_s_attention_is_the_same_alone_and_in_a_batch():
    model = _trained_like(VARIANTS["residual"])
    x = torch.randn(16, 3, 32, 32)
    with recording(model) as batch, torch.no_grad():
        model(x)
    with recording(model) as alone, torch.no_grad():
        model(x[3:4])
    for am_batch, am_alone in zip(batch.cat("attention"), alone.cat("attention")):
        assert not torch.allclose(am_batch[3], am_batch[4])  # images differ, so do their matrices
        torch.testing.assert_close(am_alone[0], am_batch[3], rtol=1e-4, atol=1e-6)


def test_entropy_is_ln_d_for_a_uniform_matrix_and_zero_for_one_hot_rows():
    uniform = torch.full((2, 8, 8), 1 / 8 / math.sqrt(8))  # the spec's uniform AM: rows sum to 1/sqrt(8)
    assert torch.allclose(row_entropy(uniform), torch.full((2,), math.log(8)))
    assert torch.allclose(row_entropy(torch.eye(8).expand(3, 8, 8)), torch.zeros(3), atol=1e-6)
    assert entropy_per_block(TransformerUltimus().eval(), torch.randn(4, 3, 32, 32)) == pytest.approx([math.log(8)] * 4, abs=1e-4)
    assert max(entropy_per_block(_trained_like(VARIANTS["residual"]), torch.randn(4, 3, 32, 32))) < math.log(8) - 0.02


def test_effective_rank_counts_directions():
    torch.manual_seed(0)
    line = torch.randn(500, 1) * torch.randn(1, 48) + torch.randn(1, 48)  # one direction, any offset
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-3)
    plane = torch.randn(500, 2) @ torch.linalg.qr(torch.randn(48, 2))[0].T  # two equal directions
    assert effective_rank(plane) == pytest.approx(2.0, abs=0.2)
    assert effective_rank(torch.randn(5000, 48)) > 40


def test_a_fresh_spec_network_passes_one_direction_and_the_residual_one_does_not():
    """The bottleneck the S9 notes describe: near-uniform attention makes each spec block's output 1-D."""
    torch.manual_seed(0)
    x, y = torch.randn(256, 3, 32, 32), torch.randint(0, 10, (256,))
    loader = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
    spec = attention_stats(TransformerUltimus(), loader, "cpu")
    residual = attention_stats(TransformerUltimus(residual=True), loader, "cpu")
    assert max(spec.rank_out) < 1.05 and min(spec.top_share_out) > 0.99
    assert min(residual.rank_out) > 10


def test_stats_and_figures_have_their_panels():
    torch.manual_seed(0)
    x, y = torch.randn(40, 3, 32, 32), torch.arange(40) % 10
    stats = attention_stats(_trained_like(VARIANTS["residual"]), [(x[:20], y[:20]), (x[20:], y[20:])], "cpu")
    assert stats.images == 40 and stats.mean_am.shape == (4, 8, 8) and stats.class_am.shape == (4, 10, 8, 8)
    torch.testing.assert_close(stats.class_am.mean(1), stats.mean_am)  # 4 images per class: the mean of means
    fig = attention_maps_figure(stats)
    assert len(fig.axes) == 4 * 11 + 1 and sum(len(ax.images) for ax in fig.axes) == 4 * 11  # + one colour bar
    history = [{"epoch": e, "attention_entropy": [2.0 - 0.1 * e] * 4} for e in (1, 2, 3)]
    fig = attention_entropy_figure(history, stats)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 4 + 1 and len(fig.axes[1].lines) == 1 + 4  # + GAP input
    assert "ultimus.0" in stats.table() and len(stats.table().splitlines()) == 2 + 4


@pytest.mark.parametrize("variant, uniform", [("spec", "0.0442"), ("prescaled-residual", "0.1250")])
def test_the_maps_title_gives_the_uniform_row_of_the_variant_drawn(variant, uniform):
    torch.manual_seed(0)
    x, y = torch.randn(20, 3, 32, 32), torch.arange(20) % 10
    stats = attention_stats(_trained_like(VARIANTS[variant]), [(x, y)], "cpu")
    assert f"a uniform row is {uniform} each" in attention_maps_figure(stats)._suptitle.get_text()


def test_a_model_without_ultimus_blocks_is_refused_in_one_line():
    with pytest.raises(ValueError, match="no Ultimus blocks"):
        attention_stats(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 10)),
                        [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))], "cpu")
