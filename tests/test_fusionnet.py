"""FusionNet: architecture facts from docs/design.md and trainability."""

import dataclasses

import pytest
import torch

from textmef.models import FusionNet, FusionNetConfig, model_config, set_scan_backend
from textmef.nn.blocks import AttentionMamba, CGAFusion, DeepFuseBlock, MutualGuidedBlock
from textmef.nn.mamba import Mamba

TINY = model_config("textmef-tiny")


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_c64_parameter_count_matches_the_authors_network_without_dead_weights():
    model = FusionNet(model_config("textmef"))
    assert count(model) == 1_275_443
    assert count(model.under_encoder) == 75_712
    assert count(model.under_attention) == 353_024
    assert count(model.under_to_token) == 4_160
    assert count(model.under_deep_fuse) == 41_472
    assert count(model.fusion) == 80_347
    assert count(model.swap_blocks[0]) == 65_536
    assert count(model.refine) == 115_288


@pytest.mark.parametrize("size", [(37, 53), (4, 4), (16, 9)])
def test_output_shape_matches_input_for_odd_sizes(size):
    model = FusionNet(TINY).eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = model(x, x.flip(0))
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_every_parameter_receives_a_nonzero_gradient():
    torch.manual_seed(0)
    model = FusionNet(TINY)
    # Varied brightness per sample so that small squeeze-excite ReLUs are not all off at once.
    scale = torch.linspace(0.2, 3.0, 6).view(-1, 1, 1, 1)
    under, over = torch.rand(6, 3, 21, 18) * scale, torch.rand(6, 3, 21, 18) * scale.flip(0)
    loss = (model(under, over) - 0.5).pow(2).mean()
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


@pytest.mark.parametrize(
    ("switch", "kinds"),
    [
        ("attention_mamba", [AttentionMamba]),
        ("mutual_swap", [MutualGuidedBlock]),
        ("deep_fuse", [DeepFuseBlock, CGAFusion]),
    ],
)
def test_ablation_switch_removes_its_modules(switch, kinds):
    full = FusionNet(TINY)
    ablated = FusionNet(dataclasses.replace(TINY, **{switch: False}))
    for kind in kinds:
        assert any(isinstance(m, kind) for m in full.modules())
        assert not any(isinstance(m, kind) for m in ablated.modules())
    assert count(ablated) < count(full)
    x = torch.rand(1, 3, 12, 10)
    assert ablated(x, x).shape == x.shape


def test_bidirectional_mamba_is_used_only_in_deep_fuse():
    model = FusionNet(TINY)
    bidirectional = [
        n
        for n, m in model.named_modules()
        if isinstance(m, Mamba) and m.backward_branch is not None
    ]
    assert sorted(bidirectional) == ["over_deep_fuse.mamba", "under_deep_fuse.mamba"]


def test_initialisation_follows_the_authors_code():
    model = FusionNet(model_config("textmef"))
    conv = model.refine.conv_in.weight
    assert abs(conv.std().item() - 0.02) < 0.002
    branch = model.under_deep_fuse.mamba.forward_branch
    assert abs(branch.conv1d.weight.std().item() - 0.02) < 0.004
    assert torch.allclose(branch.A_log.exp()[0], torch.arange(1, 17).float())
    dt = torch.nn.functional.softplus(branch.dt_proj.bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6
    assert torch.all(branch.D == 1)


def test_scan_backends_give_the_same_network_output():
    torch.manual_seed(0)
    model = FusionNet(TINY).eval()
    x, y = torch.rand(1, 3, 14, 11), torch.rand(1, 3, 14, 11)
    outs = []
    for backend in ("numba", "torch", "reference"):
        set_scan_backend(model, backend)
        with torch.no_grad():
            outs.append(model(x, y))
    torch.testing.assert_close(outs[0], outs[2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outs[1], outs[2], rtol=1e-4, atol=1e-5)


def test_config_rejects_odd_width_and_unknown_fields():
    with pytest.raises(ValueError, match="even"):
        FusionNetConfig(width=7)
    with pytest.raises(ValueError, match="unknown"):
        FusionNetConfig.from_dict({"width": 8, "colour": "blue"})
    assert FusionNetConfig.from_dict(TINY.to_dict()) == TINY


def test_token_major_causal_conv_equals_the_depthwise_conv1d():
    from textmef.nn.mamba import causal_depthwise_conv

    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3)
    x = torch.randn(2, 37, 6, requires_grad=True)
    expected = conv(x.transpose(1, 2))[..., :37].transpose(1, 2)
    got = causal_depthwise_conv(x, conv.weight, conv.bias)
    torch.testing.assert_close(got, expected)
    grads = torch.autograd.grad(got.square().sum(), (x, conv.weight, conv.bias))
    ref = torch.autograd.grad(expected.square().sum(), (x, conv.weight, conv.bias))
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b)
