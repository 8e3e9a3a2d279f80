"""The fused Mamba inner pass (textmef.ssm.fused) against the unfused composition."""

import pytest
import torch
import torch.nn.functional as F

from textmef.models import create_model, set_scan_backend
from textmef.nn.mamba import Mamba, causal_depthwise_conv
from textmef.ssm import BACKENDS, resolve_backend
from textmef.ssm.fused import conv_silu, fused_scan

pytest.importorskip("numba")


def perturbed_mamba(d_model, d_state, bidirectional, seed=0):
    """A Mamba block with every parameter moved off its initialisation (A_log, D, biases too).

    Each tensor gets noise of 0.3 times its spread (0.3 for constant tensors such as D).
    """
    torch.manual_seed(seed)
    block = Mamba(d_model, d_state=d_state, bidirectional=bidirectional)
    with torch.no_grad():
        for p in block.parameters():
            spread = p.std().item() if p.numel() > 1 else 0.0
            p.add_(0.3 * (spread or 1.0) * torch.randn_like(p))
    return block


def run(block, backend, tokens, grad_out):
    block.scan_backend = backend
    tokens = tokens.detach().requires_grad_()
    out = block(tokens)
    grads = torch.autograd.grad(out, [tokens, *block.parameters()], grad_out)
    return out, grads


def assert_grads_close(grads, ref, names, rtol=1e-4):
    for name, g, r in zip(names, grads, ref):
        scale = r.abs().max().clamp(min=1e-6)
        assert (g - r).abs().max() / scale < rtol, name


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("d_model, d_state", [(16, 4), (16, 2), (64, 16)])
@pytest.mark.parametrize("length", [1, 7, 129, 300])
def test_fused_block_equals_the_numba_composition(d_model, d_state, bidirectional, length):
    block = perturbed_mamba(d_model, d_state, bidirectional)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(2, length, d_model, generator=g)
    grad_out = torch.randn(2, length, d_model, generator=g)
    out, grads = run(block, "fused", tokens, grad_out)
    ref, ref_grads = run(block, "numba", tokens, grad_out)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-5)
    names = ["tokens", *(n for n, _ in block.named_parameters())]
    assert_grads_close(grads, ref_grads, names)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("length", [1, 7, 130])
def test_fused_block_equals_the_reference_composition(bidirectional, length):
    block = perturbed_mamba(16, 4, bidirectional, seed=3)
    g = torch.Generator().manual_seed(2)
    tokens = torch.randn(2, length, 16, generator=g)
    grad_out = torch.randn(2, length, 16, generator=g)
    out, grads = run(block, "fused", tokens, grad_out)
    ref, ref_grads = run(block, "reference", tokens, grad_out)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-5)
    names = ["tokens", *(n for n, _ in block.named_parameters())]
    assert_grads_close(grads, ref_grads, names)


def test_fused_is_an_opt_in_backend_and_runs_without_gradients():
    block = perturbed_mamba(16, 4, True)
    assert "fused" in BACKENDS
    assert resolve_backend("fused", torch.device("cpu")) == "fused"
    assert not block.uses_fused(torch.device("cpu"))  # "auto" keeps the composition
    block.scan_backend = "fused"
    assert block.uses_fused(torch.device("cpu"))
    with pytest.raises(ValueError, match="CPU"):
        resolve_backend("fused", torch.device("meta"))
    tokens = torch.randn(1, 50, 16)
    with torch.no_grad():
        got = block(tokens)
        block.scan_backend = "numba"
        torch.testing.assert_close(got, block(tokens), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
def test_conv_silu_equals_the_composition_and_passes_gradcheck(reverse):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 1, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    expected = F.silu(causal_depthwise_conv(x.flip(1) if reverse else x, w, b))
    expected = expected.flip(1) if reverse else expected
    torch.testing.assert_close(conv_silu(x, w, b, reverse), expected)
    assert torch.autograd.gradcheck(lambda *a: conv_silu(*a, reverse), (x, w, b))
    # A strided input (a view of in_proj's output, as in the block).
    xz = torch.randn(2, 9, 12, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: conv_silu(t[..., :6], w, b, reverse), (xz,))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("gate, add", [(False, False), (True, False), (True, True), (False, True)])
def test_fused_scan_passes_gradcheck(reverse, gate, add):
    g = torch.Generator().manual_seed(0)
    batch, length, channels, rank, d_state = 2, 11, 5, 2, 3

    def rand(*shape, scale=1.0, shift=0.0):
        t = torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift
        return t.requires_grad_()

    xc = rand(batch, length, channels)
    x_dbl = rand(batch, length, rank + 2 * d_state)
    W_dt = rand(channels, rank, scale=0.5)
    b_dt = rand(channels, shift=-1.0)
    A = rand(channels, d_state, scale=0.3, shift=-1.0)
    D = rand(channels)
    z = rand(batch, length, channels) if gate else None
    y_add = rand(batch, length, channels) if add else None
    tensors = [t for t in (xc, x_dbl, W_dt, b_dt, A, D, z, y_add) if t is not None]

    def f(*args):
        it = iter(args)
        a = [next(it) for _ in range(6)]
        zz = next(it) if gate else None
        ya = next(it) if add else None
        return fused_scan(*a, reverse=reverse, z=zz, y_add=ya, chunk=4)

    assert torch.autograd.gradcheck(f, tensors)


def test_reverse_scan_equals_the_forward_scan_on_flipped_inputs():
    g = torch.Generator().manual_seed(5)
    xc, z, y_add = (torch.randn(2, 140, 8, generator=g) for _ in range(3))
    x_dbl = torch.randn(2, 140, 1 + 8, generator=g)
    W_dt, b_dt = torch.randn(8, 1, generator=g), torch.randn(8, generator=g) - 2
    A, D = -torch.rand(8, 4, generator=g) - 0.1, torch.randn(8, generator=g)
    got = fused_scan(xc, x_dbl, W_dt, b_dt, A, D, reverse=True, z=z, y_add=y_add)
    flip = [t.flip(1) for t in (xc, x_dbl, z, y_add)]
    expected = fused_scan(flip[0], flip[1], W_dt, b_dt, A, D, z=flip[2], y_add=flip[3]).flip(1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["textmef-tiny", "textmef-c16"])
def test_fused_fusion_network_equals_the_unfused_one(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Mamba):
                for p in module.parameters():
                    p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    under, over = torch.rand(1, 3, 24, 40, generator=g), torch.rand(1, 3, 24, 40, generator=g)
    outs = []
    for backend in ("fused", "numba"):
        set_scan_backend(model, backend)
        with torch.no_grad():
            outs.append(model(under, over))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-5)
