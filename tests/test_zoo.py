"""The models students bring, each through every step of a run (summary and operation count, range test, training
with the doctor, every figure, Grad-CAM, attention, report, checkpoint) on synthetic data, then reopened by the
explorer: no step may crash, and a step that does not apply is one line in the log."""
import functools
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from assignments.explore import RunFolderError, open_run
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


class AuthorUltimus(nn.Module):
    """The course author's TransformerUltimus as the original solution wrote it: Ultimus blocks that mix the batch
    (``Q.T @ K`` over (B, 8) matrices) and a log_softmax at the end."""

    def __init__(self):
        super().__init__()
        from reference_ultimus import seed_model

        self.net = seed_model()

    def forward(self, x):
        return F.log_softmax(self.net(x), -1)


class AuthorCustomResNet(nn.Module):
    """Session 8's custom ResNet as course code writes it: prep, layer1 + res, layer2, layer3 + res, max-pool 4,
    a linear layer, log_softmax."""

    def __init__(self, c: int = 16):
        super().__init__()
        block = lambda i, o, pool: nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False),  # noqa: E731
                                                 *([nn.MaxPool2d(2)] if pool else []), nn.BatchNorm2d(o), nn.ReLU())
        self.prep = block(3, c, False)
        self.layer1, self.res1 = block(c, 2 * c, True), nn.Sequential(block(2 * c, 2 * c, False), block(2 * c, 2 * c, False))
        self.layer2 = block(2 * c, 4 * c, True)
        self.layer3, self.res3 = block(4 * c, 8 * c, True), nn.Sequential(block(8 * c, 8 * c, False), block(8 * c, 8 * c, False))
        self.fc = nn.Linear(8 * c, 10)

    def forward(self, x):
        x = self.layer1(self.prep(x))  # (B, 2c, 16, 16)
        x = self.layer2(x + self.res1(x))  # (B, 4c, 8, 8)
        x = self.layer3(x)  # (B, 8c, 4, 4)
        x = F.max_pool2d(x + self.res3(x), 4).flatten(1)  # (B, 8c)
        return F.log_softmax(self.fc(x), -1)


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


ZOO = {  # name -> (model source, what the run must find: "attention", "attention, no grid" or None)
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
    "course author's Ultimus (batch-mixing, log_softmax)": (AuthorUltimus, "attention, no grid"),
    "course author's CustomResNet (log_softmax)": (AuthorCustomResNet, None),
    "torchvision shufflenet_v2_x0_5": (_torchvision("shufflenet_v2_x0_5"), None),
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
    assert ("gradcam" in run.result.figures) or "Grad-CAM skipped" in log or "no misclassified" in log
    if found == "attention":
        assert "attention_maps" in run.result.figures and "attention: none found" not in log, log
    elif found == "attention, no grid":  # softmax over 8 feature dims, not positions: measured, not drawn on a grid
        assert "attention row entropy per layer before training" in log and "attention maps skipped: 8 tokens" in log
    else:
        assert "attention: none found" in log
    m = json.loads((out / "metrics.json").read_text())
    assert m["history"][-1]["epoch"] == 1
    recorded = run.model_source
    if name == "instance":  # made with an argument: not recorded, the log says how to reopen it
        assert recorded is None and "the app cannot rebuild WidthNet" in log
        ex = open_run(out, source)
    elif recorded["factory"].partition(":")[0] == "test_zoo":  # the user's own module: named, as with --model
        with pytest.raises(RunFolderError, match="pass --model test_zoo:"):
            open_run(out)
        ex = open_run(out, model_name=recorded["factory"])
    else:  # timm, torchvision: rebuilt from the checkpoint alone
        ex = open_run(out)
    image = run.data.test_split.images[0]
    top = ex.top_k(ex.prepare(image)[0], 3)
    assert len(top) == 3


@pytest.fixture(scope="module")
def partial_run(folder_dir, tmp_path_factory):
    recipe = Recipe("zoo partial", epochs=1, batch_size=16, optimizer="adam", augment=AugmentSpec(cutout=0))
    run = Run(recipe=recipe, model=functools.partial(WidthNet, 12, p=0.1), data_dir=str(folder_dir), device="cpu",
              out=str(tmp_path_factory.mktemp("zoo") / "partial"), subset=64, lr="1e-3", gallery=4)
    assert run.run_all() == 0
    return run


def test_a_partial_is_recorded_as_names_and_literals_and_rebuilt_with_its_arguments(partial_run):
    assert partial_run.model_source == {"factory": "test_zoo:WidthNet", "args": [12], "kwargs": {"p": 0.1}}
    ex = open_run(partial_run.out, model_name="test_zoo:WidthNet")
    assert ex.model.fc.in_features == 12 and ex.model.features[2].p == 0.1
    x = partial_run.data.test_split.normalized([0, 1], partial_run.data.mean, partial_run.data.std)
    with torch.no_grad():
        torch.testing.assert_close(ex.model(x), partial_run.model.eval()(x))


def _tampered(run, tmp_path, source: dict):
    """A copy of ``run``'s folder whose checkpoint names ``source`` as its model."""
    out = tmp_path / "tampered"
    out.mkdir(parents=True)
    state = torch.load(run.out / "checkpoint.pt", weights_only=True)
    state["extra"]["model_source"] = source
    torch.save(state, out / "checkpoint.pt")
    return out


def test_a_checkpoint_naming_code_outside_the_trusted_modules_is_refused_and_never_runs(partial_run, tmp_path):
    canary = tmp_path / "ran"
    for source in ({"factory": "os:system", "args": [f"touch {canary}"], "kwargs": {}},
                   {"factory": "subprocess:getoutput", "args": [f"touch {canary}"], "kwargs": {}},
                   {"factory": "models:__import__", "args": ["os"], "kwargs": {}}):
        out = _tampered(partial_run, tmp_path / source["factory"].replace(":", "-"), source)
        with pytest.raises(RunFolderError) as e:
            open_run(out)
        assert len(str(e.value).splitlines()) == 1
        assert not canary.exists()
    with pytest.raises(RunFolderError, match="not an nn.Module class or a function"):  # named, but not a model
        open_run(_tampered(partial_run, tmp_path / "named", {"factory": "os:system", "args": [f"touch {canary}"],
                                                             "kwargs": {}}), model_name="os:system")
    assert not canary.exists()


def test_the_app_command_names_a_bad_model_in_one_line(partial_run):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    for name, message in (("no_such_module:Net", "cannot be imported here"), ("os;rm:x", "is not module:name")):
        p = subprocess.run([sys.executable, "-m", "assignments.app", str(partial_run.out), "--model", name],
                           capture_output=True, text=True, cwd=repo, timeout=120)
        assert p.returncode == 1 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
