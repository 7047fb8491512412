"""The models students bring, each through every step of a run (summary and operation count, range test, training
with the doctor, every figure, Grad-CAM, attention, report, checkpoint) on synthetic data, then reopened by the
explorer: no step may crash, and a step that does not apply is one line in the log."""
import functools
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from assignments.explore import open_run
from assignments.run import Run
from utils import AugmentSpec, Recipe

pytestmark = pytest.mark.slow  # whole runs


class MHAOverFeatureMap(nn.Module):
    """Conv features (B, 32, 8, 8) as 64 tokens through nn.MultiheadAttention, with or without a class token."""

    def __init__(self, class_token: bool = False):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 32, 3, stride=4, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.cls = nn.Parameter(torch.zeros(1, 1, 32)) if class_token else None
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        t = self.conv(x).flatten(2).transpose(1, 2)  # (B, 64, 32)
        if self.cls is not None:
            t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)  # (B, 65, 32)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return self.fc(t[:, 0] if self.cls is not None else t.mean(1))  # (B, 10)


class SDPABlockNet(nn.Module):
    """Patches of 4x4 (64 tokens) through one block that calls F.scaled_dot_product_attention."""

    def __init__(self, dim: int = 32, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.qkv, self.proj, self.fc = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.Linear(dim, 10)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)  # (B, T, D)
        B, T, D = t.shape
        q, k, v = self.qkv(t).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, T, hd)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.fc((t + self.proj(o)).mean(1))


class ExplicitAttentionNet(SDPABlockNet):
    """The same block written as softmax(q kᵀ / sqrt(d)) v."""

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)  # (B, T, D)
        B, T, D = t.shape
        q, k, v = self.qkv(t).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, T, hd)
        w = (q @ k.transpose(-2, -1) / (D // self.heads) ** 0.5).softmax(-1)  # (B, h, T, T)
        return self.fc((t + self.proj((w @ v).transpose(1, 2).reshape(B, T, D))).mean(1))


class CBAM(nn.Module):
    """Channel then spatial attention (sigmoid gates) on a feature map."""

    def __init__(self, c: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(c, c // 4), nn.ReLU(), nn.Linear(c // 4, c))
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x):
        x = x * torch.sigmoid(self.mlp(x.mean((2, 3))) + self.mlp(x.amax((2, 3))))[:, :, None, None]
        return x * torch.sigmoid(self.spatial(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))


def cbam_net():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), CBAM(16),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(), CBAM(32),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def conv_mixer(dim: int = 32, depth: int = 2):
    residual = lambda f: type("Residual", (nn.Module,), {"__init__": lambda s: (nn.Module.__init__(s), setattr(s, "f", f))[0],  # noqa: E731
                                                          "forward": lambda s, x: s.f(x) + x})()
    return nn.Sequential(nn.Conv2d(3, dim, 2, stride=2), nn.GELU(), nn.BatchNorm2d(dim),
                         *[nn.Sequential(residual(nn.Sequential(nn.Conv2d(dim, dim, 5, groups=dim, padding=2),
                                                                nn.GELU(), nn.BatchNorm2d(dim))),
                                         nn.Conv2d(dim, dim, 1), nn.GELU(), nn.BatchNorm2d(dim)) for _ in range(depth)],
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(dim, 10))


class WidthNet(nn.Module):
    """A class with a required argument (passed through functools.partial), dropout and log_softmax output."""

    def __init__(self, width: int, p: float = 0.2):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Dropout(p),
                                      nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        return F.log_softmax(self.fc(self.features(x).mean((2, 3))), -1)


class Asserting(nn.Module):
    """A forward that asserts its input size, as course code does."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 10)

    def forward(self, x):
        assert x.shape[1:] == (3, 32, 32), x.shape
        return self.fc(self.conv(x).mean((2, 3)))


def pooled_bn1d():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.BatchNorm1d(16), nn.Linear(16, 10))


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 64), nn.ReLU(), nn.Linear(64, 10))


def _torchvision(name):
    import torchvision

    return functools.partial(getattr(torchvision.models, name), num_classes=10)


def _timm(name, **kwargs):
    import timm

    return functools.partial(timm.create_model, name, pretrained=False, num_classes=10, **kwargs)


ZOO = {  # name -> (model source, what the run must have found: "attention" or None)
    "torchvision resnet18": (_torchvision("resnet18"), None),
    "torchvision mobilenet_v3_small": (_torchvision("mobilenet_v3_small"), None),
    "torchvision efficientnet_b0": (_torchvision("efficientnet_b0"), None),
    "timm resnet18": (_timm("resnet18"), None),
    "timm vit patch 4": (_timm("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=2), "attention"),
    "BatchNorm1d after pooling": (pooled_bn1d, None),
    "nn.Sequential MLP": (mlp, None),
    "MHA without class token": (MHAOverFeatureMap, "attention"),
    "MHA with class token": (functools.partial(MHAOverFeatureMap, class_token=True), "attention"),
    "SDPA block": (SDPABlockNet, "attention"),
    "explicit softmax attention": (ExplicitAttentionNet, "attention"),
    "CBAM": (cbam_net, None),
    "ConvMixer": (conv_mixer, None),
    "partial with log_softmax and dropout": (functools.partial(WidthNet, 16), None),
    "factory with arguments": (functools.partial(conv_mixer, dim=16, depth=1), None),
    "instance": (WidthNet(8), None),
    "asserts its input size": (Asserting, None),
}


@pytest.mark.parametrize("name", ZOO)
def test_every_step_runs_on_the_model_and_the_explorer_reopens_it(name, folder_dir, tmp_path):
    source, found = ZOO[name]
    recipe = Recipe(f"zoo {name}", epochs=1, batch_size=16, optimizer="adam", lr_iters=20,
                    augment=AugmentSpec(pad=2, flip=True, cutout=4))
    torch.manual_seed(0)
    run = Run(recipe=recipe, model=source, data_dir=str(folder_dir), device="cpu", out=str(tmp_path / "run"),
              subset=64, gallery=4)
    assert run.run_all() == 0
    out = tmp_path / "run"
    for file in ("report.md", "metrics.json", "log.txt", "checkpoint.pt", "curves.png", "confusion.png",
                 "class_accuracy.png", "misclassified.png", "lr_range_test.png"):
        assert (out / file).is_file(), file
    log = (out / "log.txt").read_text()
    assert "Traceback" not in log
    assert ("gradcam" in run.figures) or "Grad-CAM skipped" in log or "no misclassified" in log
    if found == "attention":
        assert "attention_maps" in run.figures and "attention: none found" not in log, log
    else:
        assert "attention: none found" in log
    m = json.loads((out / "metrics.json").read_text())
    assert m["history"][-1]["epoch"] == 1
    ex = open_run(out, source)
    image = run.test_split.images[0]
    top = ex.top_k(ex.prepare(image)[0], 3)
    assert len(top) == 3
