"""S10's ViT (models/model10.py): each image attends only to its own tokens; the written-out and the fused
attention compute the same thing; the attention figures see the weights either way; the doctor is quiet on a ViT that learns."""
import pytest
import torch

from models.model10 import ViT
from test_doctor import STEPS, run
from synthetic import colour_task
from utils.checks import batch_independence
from utils.model_attention import SelfAttention, model_attention
from utils.seed import set_seed


def test_the_defaults_are_the_documented_size_and_shapes():
    model = ViT()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 239_562  # the docstring's count
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"ViT expects a batch of images shaped \(B, 3, 32, 32\); got \(2, 3, 28, 28\)"):
        model(torch.randn(2, 3, 28, 28))


@pytest.mark.parametrize("fused", [False, True])
def test_one_image_s_output_does_not_depend_on_the_others(fused):
    torch.manual_seed(0)
    model = ViT(fused=fused).eval()
    x = torch.randn(8, 3, 32, 32)
    other = x.clone()
    other[1:] = torch.randn(7, 3, 32, 32)  # image 0 kept, its batch-mates replaced
    with torch.no_grad():
        assert torch.allclose(model(x)[0], model(other)[0], atol=1e-6)
        assert torch.allclose(model(x)[:1], model(x[:1]), atol=1e-6)
    assert batch_independence(model) < 1e-5


def test_written_out_and_fused_attention_give_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    explicit, fused = ViT(fused=False).double(), ViT(fused=True).double()
    fused.load_state_dict(explicit.state_dict())
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    out_e, out_f = explicit(x), fused(x)
    assert torch.allclose(out_e, out_f, rtol=0, atol=1e-12)
    out_e.square().sum().backward()
    out_f.square().sum().backward()
    for (name, a), b in zip(explicit.named_parameters(), fused.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=0, atol=1e-10), name
    assert ViT().blocks[0].attn.fused is None  # the default: written out under CPU bf16 autocast, else fused


def test_the_attention_figures_see_the_same_weights_either_way():
    torch.manual_seed(0)
    explicit, fused = ViT(fused=False).eval(), ViT(fused=True).eval()
    fused.load_state_dict(explicit.state_dict())
    x = torch.randn(4, 3, 32, 32)
    stats = []
    for model in (explicit, fused):
        kind = model_attention(model)
        assert isinstance(kind, SelfAttention)
        stats.append(kind.stats(None, x, 10))
    assert stats[0].layers == stats[1].layers and len(stats[0].layers) == 6
    assert torch.allclose(stats[0].cls, stats[1].cls, atol=1e-6)  # the class token's attention on the 8x8 grid


@pytest.mark.slow
def test_the_doctor_is_quiet_on_a_vit_that_learns():
    set_seed(0)
    data = colour_task(32 * STEPS, 300)
    history, doctor = run(ViT(), data, epochs=2, max_lr=1e-3)
    assert doctor.findings == [] and history[-1]["test_acc"] > 50


def test_the_default_fuses_in_fp32_and_writes_attention_out_under_cpu_bf16_autocast(monkeypatch):
    import models.model10 as model10

    calls = []
    fused = model10.F.scaled_dot_product_attention
    monkeypatch.setattr(model10.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or fused(*a, **k))
    model, x = ViT(depth=2), torch.randn(2, 3, 32, 32)
    model(x)
    assert len(calls) == 2  # fp32: one fused call per block
    with torch.autocast("cpu", torch.bfloat16):
        model(x)
    assert len(calls) == 2  # bf16 on the CPU: written out


def test_mult_adds_count_the_attention_whether_fused_or_written_out():
    from utils.summary import mult_adds

    fused, explicit = mult_adds(ViT(fused=True)), mult_adds(ViT(fused=False))
    without_attention = mult_adds(ViT(fused=True, depth=0))
    per_block_attention = 4 * 65 * 65 * (16 + 16)  # heads x N x N x (d for q k^T + d for weights x v)
    assert fused == explicit and fused > without_attention + 6 * per_block_attention


@pytest.mark.slow
def test_s10_through_run_flags_adam_at_0_05_at_step_0_and_its_default_recipe_gets_no_finding(folder_dir, tmp_path):
    """On synthetic data, the command's path: S10 with Adam at 0.05 (its students' LR) is flagged before its first
    step; S10 as it is (lr "auto", enough steps for the recipe's max LR) gets no finding and learns."""
    import dataclasses
    import json

    from assignments.recipes import recipe
    from assignments.run import Run

    adam = dataclasses.replace(recipe("S10"), optimizer="adam", weight_decay=0.0)
    hot = Run(recipe=adam, data_dir=str(folder_dir), device="cpu", lr="0.05", epochs=1, out=str(tmp_path / "hot"),
              tensorboard=False)
    hot.find_lr()
    hot.train()
    assert [(f["step"], f["kind"]) for f in hot.result.health] == [(0, "schedule")]
    # 200 images at batch 16: 13 steps an epoch, 104 in 8 epochs, as many as the range test's 100 and more
    plain = Run(assignment="S10", data_dir=str(folder_dir), device="cpu", epochs=8, batch_size=16,
                out=str(tmp_path / "plain"), tensorboard=False)
    plain.find_lr()
    plain.train()
    assert plain.result.max_lr == 2.15e-2 and plain.result.health == []
    metrics = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert metrics["health"] == [] and plain.result.history[-1]["test_acc"] > 50
