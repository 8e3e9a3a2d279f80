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


# The block forwards as they were before the in-place rewrite of textmef.nn.blocks, verbatim
# (bodies unchanged; only `self` became the first argument of plain functions).
def _old_hin_forward(self, x):
    import torch.nn.functional as F

    y = F.leaky_relu(self.conv_1(x), self.slope)
    a, b = y.chunk(2, dim=1)
    y = torch.cat([self.norm(a), b], dim=1)
    return x + F.leaky_relu(self.conv_2(y), self.slope)


def _old_channel_attention_forward(self, x):
    import torch.nn.functional as F

    res = self.process(x)
    gate = torch.sigmoid(self.excite(F.relu(self.squeeze(res.mean((2, 3), keepdim=True)))))
    return gate * res + x


def _old_cga_forward(self, under, over):
    s = under + over
    sattn = self.spatial(torch.cat([s.mean(1, keepdim=True), s.amax(1, keepdim=True)], 1))
    p1 = self.channel(s) + sattn
    paired = torch.stack([s, p1], dim=2).flatten(1, 2)
    w = torch.sigmoid(torch.sigmoid(self.pixel(paired)))
    return self.project(s + w * under + (1 - w) * over)


def _old_attention_act(self, x):
    import torch.nn.functional as F

    return F.leaky_relu(x, self.slope)


def _old_attention_forward(self, features):
    import torch.nn.functional as F

    att = self._act(self.fe2(self._act(self.fe1(features))))
    att = self._act(self.att_1(att))
    att_max, att_avg = self._pools(att)
    att_max = self._scan_map(att_max, self.max_to_token, self.mamba_max)
    att_avg = self._scan_map(att_avg, self.avg_to_token, self.mamba_avg)
    att = self._act(self.att_2(torch.cat([att_max, att_avg], 1)))
    level = self._act(self.level_1(att))
    level = self._act(self.level_2(torch.cat(self._pools(level), 1)))
    level = self._act(self.level_3(level))
    level = F.interpolate(level, size=att.shape[-2:], mode="bilinear", align_corners=False)
    att = self._act(self.att_4(self._act(self.att_3(att)) + level))
    att = F.interpolate(att, size=features.shape[-2:], mode="bilinear", align_corners=False)
    return torch.sigmoid(self.att_5(att))


def _old_mutual_forward(self, under, over, res_under, res_over):
    res_under = under + res_under
    res_over = over + res_over
    under = self.norm_under(res_under)
    over = self.norm_over(res_over)
    half = under.shape[-1] // 2
    swapped_under = torch.cat([over[..., :half], under[..., half:]], -1)
    swapped_over = torch.cat([under[..., :half], over[..., half:]], -1)
    return (self.mamba_under(swapped_under), self.mamba_over(swapped_over), res_under, res_over)


def _old_deep_fuse_forward(self, tokens, residual, height, width):
    from textmef.nn.blocks import map_from_tokens

    residual = tokens + residual
    x = map_from_tokens(self.mamba(self.norm(self.norm(residual))), height, width)
    return x + self.dwconv(x)


def _use_old_blocks(monkeypatch):
    from textmef.nn import blocks

    monkeypatch.setattr(blocks.HINResBlock, "forward", _old_hin_forward)
    monkeypatch.setattr(blocks.ChannelAttentionResidual, "forward", _old_channel_attention_forward)
    monkeypatch.setattr(blocks.CGAFusion, "forward", _old_cga_forward)
    monkeypatch.setattr(blocks.AttentionMamba, "_act", _old_attention_act)
    monkeypatch.setattr(blocks.AttentionMamba, "forward", _old_attention_forward)
    monkeypatch.setattr(blocks.MutualGuidedBlock, "forward", _old_mutual_forward)
    monkeypatch.setattr(blocks.DeepFuseBlock, "forward", _old_deep_fuse_forward)


def _forward_and_grads(model, under, over):
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        inference = model(under, over)
    out = model(under, over)
    (out - 0.5).pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return inference, out.detach(), grads


@pytest.mark.parametrize(
    "config",
    [
        TINY,
        FusionNetConfig(width=16, d_state=4),
        dataclasses.replace(TINY, mutual_swap=False),
        dataclasses.replace(TINY, deep_fuse=False),
    ],
    ids=["tiny", "c16", "no-swap", "no-deep-fuse"],
)
def test_in_place_blocks_match_the_out_of_place_code_before_them(config, monkeypatch):
    torch.manual_seed(0)
    model = FusionNet(config)
    for p in model.parameters():  # larger weights than the init, so every path matters
        p.data.add_(torch.randn_like(p) * 0.05)
    scale = torch.linspace(0.3, 2.0, 2).view(-1, 1, 1, 1)
    under, over = torch.rand(2, 3, 23, 30) * scale, torch.rand(2, 3, 23, 30) * scale.flip(0)
    new = _forward_and_grads(model, under, over)
    with monkeypatch.context() as m:
        _use_old_blocks(m)
        old = _forward_and_grads(model, under, over)
    torch.testing.assert_close(new[0], old[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(new[1], old[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(new[0], new[1], rtol=0, atol=1e-5)
    assert new[2].keys() == old[2].keys()
    for name, grad in new[2].items():
        scale_ = max(old[2][name].abs().max().item(), 1.0)
        torch.testing.assert_close(grad, old[2][name], rtol=0, atol=1e-5 * scale_, msg=name)
