"""The three models exactly as the assignments specify."""
import pytest
import torch
from torch import nn

from models import CustomResNet, ResNet18, TransformerUltimus, UltimusBlock
from reference_ultimus import seed_model
from utils.summary import count_params, model_summary

S9_VARIANTS = [dict(residual=r, scale=s) for r in (False, True) for s in ("after_softmax", "before_softmax")]
MODELS = {
    "model7": (ResNet18, 11_173_962),
    "model8": (CustomResNet, 6_573_130),
    "model9": (TransformerUltimus, 25_680),
}


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count(name):
    cls, expected = MODELS[name]
    assert count_params(cls()) == expected


@pytest.mark.parametrize("kwargs", S9_VARIANTS)
def test_every_s9_variant_keeps_25680_parameters(kwargs):
    assert count_params(TransformerUltimus(**kwargs)) == 25_680


def test_ultimus_block_parameters_are_bias_free_linears():
    block = UltimusBlock()
    assert count_params(block) == 3 * 48 * 8 + 8 * 48
    assert all(m.bias is None for m in (block.k, block.q, block.v, block.out))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("batch", [1, 7, 128])
def test_output_shape(name, batch):
    if name == "model7" and batch == 128:
        batch = 16  # ResNet18 at 128 costs seconds on 2 CPUs; the shape logic is the same
    model = MODELS[name][0]().eval()
    with torch.no_grad():
        assert model(torch.randn(batch, 3, 32, 32)).shape == (batch, 10)


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_nonzero_gradient(name):
    torch.manual_seed(0)
    model = MODELS[name][0]().train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.arange(8) % 10)
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_weights_and_logits(name):
    cls = MODELS[name][0]
    x = torch.randn(4, 3, 32, 32)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = cls().eval()
        with torch.no_grad():
            outs.append((model.state_dict(), model(x)))
    (sd1, y1), (sd2, y2) = outs
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert torch.equal(y1, y2)
    torch.manual_seed(124)
    assert not torch.equal(next(iter(cls().state_dict().values())), next(iter(sd1.values())))


def _alone_vs_in_batch(model) -> float:
    """Largest difference between an image's logits alone and among 255 other random images, relative to
    the logits' size (a fresh spec network's logits are ~1e-8, so an absolute tolerance would pass anything)."""
    torch.manual_seed(0)
    model.eval()
    batch = torch.randn(256, 3, 32, 32)
    with torch.no_grad():
        together = model(batch)  # (256, 10)
        alone = torch.cat([model(batch[i:i + 1]) for i in range(0, 256, 51)])  # a few images, batch of 1
    return ((together[::51] - alone).abs().max() / together.abs().max()).item()


@pytest.mark.parametrize("kwargs", S9_VARIANTS)
def test_model9_logits_do_not_depend_on_the_rest_of_the_batch(kwargs):
    torch.manual_seed(1)
    assert _alone_vs_in_batch(TransformerUltimus(**kwargs)) < 1e-4


def test_the_per_sample_test_catches_the_seeds_batch_mixing_block():
    torch.manual_seed(1)
    assert _alone_vs_in_batch(seed_model()) > 1e-3


def test_attention_rows_sum_to_one_over_sqrt8_in_spec_order():
    block = UltimusBlock(scale="after_softmax")
    am = block.attention(torch.randn(5, 48))  # (5, 8, 8)
    assert am.shape == (5, 8, 8)
    torch.testing.assert_close(am.sum(-1), torch.full((5, 8), 8 ** -0.5))
    am2 = UltimusBlock(scale="before_softmax").attention(torch.randn(5, 48))
    torch.testing.assert_close(am2.sum(-1), torch.ones(5, 8))


def test_residual_variant_adds_the_input():
    torch.manual_seed(0)
    plain, res = UltimusBlock(), UltimusBlock(residual=True)
    res.load_state_dict(plain.state_dict())
    x = torch.randn(3, 48)
    torch.testing.assert_close(res(x), x + plain(x))


def test_unknown_scale_is_rejected():
    with pytest.raises(ValueError, match="scale must be one of"):
        UltimusBlock(scale="sideways")


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (2, 3072), (3, 32, 32)])
def test_bad_input_names_the_expected_shape(name, shape):
    with pytest.raises(ValueError, match=r"expects a batch of images shaped \(B, 3, "):
        MODELS[name][0]()(torch.randn(*shape))


def test_model8_needs_32x32():
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        CustomResNet()(torch.randn(1, 3, 64, 64))


def test_models_return_logits_not_log_probabilities():
    torch.manual_seed(0)
    with torch.no_grad():
        out = TransformerUltimus().eval()(torch.randn(4, 3, 32, 32))
    assert not torch.allclose(out.exp().sum(1), torch.ones(4), atol=1e-3)


@pytest.mark.parametrize("name", MODELS)
def test_summary_reports_the_count_and_leaves_the_model_alone(name):
    cls, expected = MODELS[name]
    model = cls().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = model_summary(model)
    assert s.total_params == expected
    assert model.training and next(model.parameters()).device.type == "cpu"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats untouched
    text = str(s)
    assert "Kernel Shape" in text and "Output Shape" in text and "Input Shape" in text


def test_the_operation_count_runs_models_that_reach_one_value_per_channel():
    """torchvision's resnet18 reaches 1x1 at layer4 on 32x32 images, and a BatchNorm1d after pooling sees a
    (B, C) vector: in train mode on one image both refuse; the count runs in eval mode on two images and leaves
    the model in the mode it was in."""
    from torchvision.models import resnet18

    from utils.summary import mult_adds

    pooled_bn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(8),
                              nn.Linear(8, 10))
    for model in (resnet18(num_classes=10), pooled_bn):
        for training in (True, False):
            model.train(training)
            assert mult_adds(model) > 0 and model.training == training


def test_grad_cam_candidates_include_blocks_that_gate_a_feature_map():
    """CBAM's output is the feature map it gates (its 1-channel spatial conv runs inside it): a candidate, and the
    default layer when it is the last block of at least 8x8."""
    from test_zoo import cbam_net
    from utils.gradcam import candidate_layers, default_layer

    model = cbam_net()  # conv-BN-ReLU-CBAM at 32x32, then at 16x16: "3" and "7" are the CBAM blocks
    names = [layer.name for layer in candidate_layers(model)]
    assert {"3", "7"} <= set(names)
    assert default_layer(model).name == "7"
