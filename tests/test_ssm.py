"""Selective scan: every fast backend against the sequential reference."""

import pytest
import torch
import torch.nn.functional as F

from textmef.ssm import selective_scan, selective_scan_reference

FAST_BACKENDS = ["numba", "torch"]


def make_inputs(batch, length, d_inner, d_state, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, length, d_inner, generator=g, dtype=dtype)
    delta = F.softplus(torch.randn(batch, length, d_inner, generator=g, dtype=dtype) - 2)
    A = -(torch.rand(d_inner, d_state, generator=g, dtype=dtype) * 8 + 0.2)
    B = torch.randn(batch, length, d_state, generator=g, dtype=dtype)
    C = torch.randn(batch, length, d_state, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (u, delta, A, B, C)]


def grads(y, inputs, seed=1):
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    return torch.autograd.grad(y, inputs, g)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1, 3, 2), (2, 97, 40, 16), (1, 300, 130, 5)])
def test_fast_scan_matches_reference_outputs_and_all_gradients(backend, shape):
    inputs = make_inputs(*shape)
    y_ref = selective_scan_reference(*inputs)
    y = selective_scan(*inputs, backend=backend, chunk=32)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    for name, g, g_ref in zip("u delta A B C".split(), grads(y, inputs), grads(y_ref, inputs)):
        scale = g_ref.abs().max().clamp(min=1e-6)
        assert (g - g_ref).abs().max() / scale < 1e-4, name


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_reversed_direction_equals_reference_on_flipped_sequence(backend):
    u, delta, A, B, C = make_inputs(2, 64, 16, 4)
    flip = [t.flip(1) for t in (u, delta)] + [A] + [t.flip(1) for t in (B, C)]
    y = selective_scan(*flip, backend=backend, chunk=16).flip(1)
    y_ref = selective_scan_reference(*flip).flip(1)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    # Scanning backwards differs from scanning forwards: the test is not vacuous.
    assert not torch.allclose(y, selective_scan_reference(u, delta, A, B, C), atol=1e-3)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_gradcheck_float64(backend):
    inputs = make_inputs(1, 9, 3, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda *xs: selective_scan(*xs, backend=backend, chunk=4), inputs, eps=1e-6, atol=1e-5
    )


def test_chunk_size_does_not_change_the_result():
    inputs = make_inputs(1, 100, 8, 4)
    ys = [selective_scan(*inputs, backend="numba", chunk=c) for c in (1, 7, 128)]
    for y in ys[1:]:
        torch.testing.assert_close(y, ys[0])
    g = [grads(selective_scan(*inputs, backend="numba", chunk=c), inputs) for c in (3, 50)]
    for a, b in zip(*g):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_inference_mode_keeps_no_state_for_backward():
    inputs = [t.detach() for t in make_inputs(1, 50, 8, 4)]
    with torch.inference_mode():
        y = selective_scan(*inputs, backend="numba")
    torch.testing.assert_close(y, selective_scan_reference(*inputs), rtol=1e-4, atol=1e-5)


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown scan backend"):
        selective_scan(*make_inputs(1, 2, 2, 2), backend="fortran")
