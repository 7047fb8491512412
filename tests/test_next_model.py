"""Next week's model through the whole pipeline: timm's and torchvision's ViTs with Grad-CAM on their token grid,
the model contract (one (B, 10) tensor) checked at setup, an MLP whose Grad-CAM is skipped without ending the
run, batch mixing seen through a final log_softmax, seeded factories."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from assignments.run import Run
from reference_ultimus import seed_model
from utils import AugmentSpec, Recipe
from utils.checks import ModelContractError, batch_independence, check_contract, eval_outputs
from utils.gradcam import default_layer, gradcam_maps

EVERY_FILE = ("log.txt", "metrics.json", "checkpoint.pt", "report.md", "augmented.png", "curves.png",
              "class_accuracy.png", "confusion.png", "misclassified.png", "gradcam.png")


def timm_vit():
    import timm

    return timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4, depth=2,
                             embed_dim=48, num_heads=3)


def torchvision_vit():
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                             num_classes=10)


def recipe(name):
    return Recipe(name, epochs=2, batch_size=32, optimizer="adam", augment=AugmentSpec(pad=2, flip=True, cutout=0))


def varies_along_both_axes(maps: np.ndarray) -> bool:
    """No map is constant along its rows or its columns (the stripes a wrongly read layer gives)."""
    return all(m.std(axis=0).max() > 1e-3 and m.std(axis=1).max() > 1e-3 for m in maps)


@pytest.mark.parametrize("factory, layer", [(timm_vit, "blocks.1.norm1"),
                                            (torchvision_vit, "encoder.layers.encoder_layer_1.ln_1")])
@pytest.mark.slow
def test_a_vit_runs_end_to_end_with_grad_cam_on_its_token_grid(factory, layer, folder_dir, tmp_path):
    out = tmp_path / "vit"
    run = Run(recipe=recipe(f"S10 {factory.__name__}"), model=factory, data_dir=str(folder_dir), device="cpu",
              lr="0.002", out=str(out), subset=96, gallery=4)
    assert run.run_all() == 0
    for name in EVERY_FILE:
        assert (out / name).is_file(), name
    checks = json.loads((out / "metrics.json").read_text())["checks"]
    assert checks["gradcam_layer"] == layer and checks["gradcam_grid"] == f"{layer} (8x8 token grid)"
    x = run.data.test_split.normalized(range(8), run.data.mean, run.data.std)
    maps = gradcam_maps(run.model, x, [int(c) for c in run.data.test_split.labels[:8]], layer)
    assert maps.shape == (8, 32, 32) and varies_along_both_axes(maps)
    mults = next(line for line in run.result.tables["summary"].splitlines() if "mult-adds" in line)
    # every token's linear layers: depth x tokens x (4 D^2 + 2 D x MLP), the attention's two products (tokens^2 x
    # 2 D per layer), the patch convolution and the head; timm calls F.scaled_dot_product_attention, torchvision
    # nn.MultiheadAttention
    depth, tokens, d, mlp = 2, 65, *((48, 192) if factory is timm_vit else (32, 64))
    rough = depth * tokens * (4 * d * d + 2 * d * mlp) + depth * tokens * tokens * 2 * d + 64 * d * 48 + 10 * d
    assert float(mults.split()[2]) * 1e6 == pytest.approx(rough, rel=0.02)  # torchinfo alone: a tenth of it


def test_the_default_layer_is_a_feature_map_or_a_token_map_never_another_4d_tensor():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4, depth=12)
    assert default_layer(vit).name == "blocks.11.norm1"  # not blocks.11.attn.k_norm's (B, 3, 65, 64)
    from models import CustomResNet, ResNet18, TransformerUltimus

    assert [default_layer(m).name for m in (ResNet18(), CustomResNet(), TransformerUltimus())] == \
        ["layer3", "layer2", "convs"]


class Tuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 10)

    def forward(self, x):
        z = self.fc(x.mean((2, 3)))
        return z, z.detach()


class Dict(Tuple):
    def forward(self, x):
        return {"logits": self.fc(x.mean((2, 3)))}


class Hundred(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 100)

    def forward(self, x):
        return self.fc(x.mean((2, 3)))


class Pooled(Tuple):  # averages over the batch: one row for every batch
    def forward(self, x):
        return self.fc(x.mean((0, 2, 3), keepdim=True).flatten(2).mean(2))


@pytest.mark.parametrize("model, message", [
    (Tuple, "Tuple returns a tuple of 2; return one tensor of shape (B, 10) (logits or log-probabilities), e.g. "
            "the logits only: out[0]"),
    (Dict, "Dict returns a dict ('logits'); return one tensor of shape (B, 10)"),
    (Hundred, "Hundred returns 100 scores per image; CIFAR-10 has 10 classes: give its last layer 10 outputs"),
    (Pooled, "Pooled returns shape (1, 10) for a batch of 4"),
])
def test_a_model_that_breaks_the_contract_is_one_line_at_setup_and_writes_nothing(model, message, folder_dir,
                                                                                   tmp_path):
    with pytest.raises(ModelContractError) as e:
        Run(recipe=recipe("S10 contract"), model=model, data_dir=str(folder_dir), device="cpu", lr="0.01",
            out=str(tmp_path / "o"), subset=96)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert not (tmp_path / "o").exists()


def test_the_contract_passes_the_built_in_models_and_timm():
    from models import CustomResNet, ResNet18, TransformerUltimus

    for model in (ResNet18(), CustomResNet(), TransformerUltimus(), timm_vit(), torchvision_vit()):
        check_contract(model)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)


@pytest.mark.slow
def test_a_model_without_a_spatial_layer_gets_grad_cam_skipped_and_every_other_file(folder_dir, tmp_path):
    out = tmp_path / "mlp"
    run = Run(recipe=recipe("S10 MLP"), model=MLP, data_dir=str(folder_dir), device="cpu", lr="0.01",
              out=str(out), subset=96, gallery=4)
    assert run.run_all() == 0
    for name in set(EVERY_FILE) - {"gradcam.png"}:
        assert (out / name).is_file(), name
    assert not (out / "gradcam.png").exists()
    m = json.loads((out / "metrics.json").read_text())
    assert m["checks"]["gradcam"].startswith("skipped: MLP has no feature map of at least 8x8")
    assert "Grad-CAM skipped: MLP has no feature map" in (out / "log.txt").read_text()
    assert "Grad-CAM skipped: MLP has no feature map" in (out / "report.md").read_text()


class AuthorUltimus(nn.Module):
    """The course author's batch-mixing TransformerUltimus, ending in log_softmax as the original does."""

    def __init__(self):
        super().__init__()
        self.net = seed_model()

    def forward(self, x):
        return F.log_softmax(self.net(x), dim=-1)


@pytest.mark.slow
def test_batch_mixing_behind_a_log_softmax_is_measured_on_the_scores_and_flagged_at_setup(folder_dir, tmp_path):
    torch.manual_seed(0)
    model = AuthorUltimus()
    images = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    together, alone = eval_outputs(model, images)[:1], eval_outputs(model, images[:1])
    # the log-probabilities hide the mixing (what is left is float rounding, which depends on the CPU's kernels)
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)
    assert batch_independence(model) > 1e-3  # the scores before log_softmax show it
    run = Run(recipe=recipe("S10 author"), model=AuthorUltimus, data_dir=str(folder_dir), device="cpu",
              lr="0.001", out=str(tmp_path / "a"), subset=96)
    assert run.result.checks["batch_independence"] > 1e-3


def _first_weights(run):
    return next(run.model.parameters()).detach().clone()


@pytest.mark.slow
def test_a_factory_is_seeded_and_an_instance_is_named_as_drawn_before_the_seed(folder_dir, tmp_path):
    common = dict(recipe=recipe("S10 seed"), data_dir=str(folder_dir), device="cpu", lr="0.01", subset=96, seed=5)
    torch.manual_seed(123)
    a = Run(model=MLP, out=str(tmp_path / "a"), **common)
    torch.manual_seed(456)
    b = Run(model=MLP, out=str(tmp_path / "b"), **common)
    assert torch.equal(_first_weights(a), _first_weights(b))
    assert "an instance was passed" not in (tmp_path / "a" / "log.txt").read_text()
    c = Run(model=MLP(), out=str(tmp_path / "c"), **common)
    assert "an instance was passed, so its weights were drawn before the run's seed" in \
        (tmp_path / "c" / "log.txt").read_text()
    for run in (a, b, c):
        run.close()


def test_recorded_vit_attention_is_softmax_qk_and_leaves_the_outputs_unchanged():
    from utils.vit_attention import attention_layers, recording

    torch.manual_seed(0)
    vit, tv = timm_vit().eval(), torchvision_vit().eval()
    x = torch.randn(3, 3, 32, 32)
    for model in (vit, tv):
        plain = model(x)
        with recording(model) as maps, torch.no_grad():
            seen = model(x)
        assert torch.equal(plain, seen)
        assert [m[0].shape for m in maps] == [(3, heads, 65, 65) for _ in range(2)
                                               for heads in [3 if model is vit else 2]]
    # timm without its fused kernel computes softmax(q k^T * scale) itself: its attention dropout sees it
    explicit = []
    for _, layer in attention_layers(vit):
        layer.fused_attn = False
        layer.attn_drop.register_forward_hook(lambda m, i, o: explicit.append(i[0].detach()))
    with recording(vit) as maps, torch.no_grad():
        vit(x)
    for mine, theirs in zip(maps, explicit):
        assert torch.allclose(mine[0], theirs, atol=1e-6)
    # torch's MultiheadAttention returns the per-head weights when asked
    layer = attention_layers(tv)[0][1]
    tokens = torch.randn(3, 65, 32)
    from utils.vit_attention import attention_weights

    _, weights = layer(tokens, tokens, tokens, need_weights=True, average_attn_weights=False)
    assert torch.allclose(attention_weights(layer, tokens), weights, atol=1e-6)


@pytest.mark.slow
def test_a_vit_run_draws_its_attention_like_s9_s(folder_dir, tmp_path):
    out = tmp_path / "vit"
    run = Run(recipe=recipe("S10 ViT attention"), model=timm_vit, data_dir=str(folder_dir), device="cpu",
              lr="0.002", out=str(out), subset=96, gallery=4)
    assert run.run_all() == 0
    for name in ("attention_maps.png", "attention_rollout.png", "attention_entropy.png"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    assert [len(e["attention_entropy"]) for e in m["history"]] == [2, 2]
    assert len(m["checks"]["attention_entropy_start"]) == 2 and m["checks"]["attention"]["layers"] == \
        ["blocks.0.attn", "blocks.1.attn"]
    from utils.vit_attention import entropy_per_layer

    assert m["history"][-1]["attention_entropy"] == entropy_per_layer(run.model, run.analysis.probe())
