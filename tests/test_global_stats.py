"""Shared image-wide statistics: recording, replaying, and the plain path outside them."""

import pytest
import torch

from textmef.nn.global_stats import (
    SharedStatistics,
    global_mean,
    instance_norm,
    sharing_statistics,
)


def _norm() -> torch.nn.InstanceNorm2d:
    norm = torch.nn.InstanceNorm2d(4, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    return norm


def test_outside_the_context_the_operations_are_the_plain_torch_ones():
    x = torch.randn(2, 4, 9, 7)
    norm = _norm()
    torch.testing.assert_close(instance_norm(norm, x), norm(x))
    torch.testing.assert_close(global_mean(norm, x), x.mean((2, 3), keepdim=True))


def test_replaying_statistics_recorded_on_the_same_input_equals_instance_norm():
    x = torch.randn(2, 4, 9, 7) * 3 + 1
    norm = _norm()
    stats = SharedStatistics()
    with sharing_statistics(stats):
        instance_norm(norm, x)
    stats.recording = False
    with sharing_statistics(stats):
        replayed = instance_norm(norm, x)
    torch.testing.assert_close(replayed, norm(x), rtol=1e-5, atol=1e-5)


def test_statistics_summed_over_a_partition_of_rows_equal_the_whole_image():
    x = torch.randn(1, 4, 30, 11) * 2 + 0.5
    norm, pool = _norm(), torch.nn.Identity()
    stats = SharedStatistics()
    with sharing_statistics(stats):
        # Overlapping strips, each counting only its own rows (as tiled inference does).
        for rows, core in [(slice(0, 14), slice(0, 12)), (slice(8, 30), slice(4, 22))]:
            stats.region = (core, slice(None))
            instance_norm(norm, x[..., rows, :])
            global_mean(pool, x[..., rows, :])
    stats.recording, stats.region = False, None
    with sharing_statistics(stats):
        strip = x[..., 5:20, :]
        torch.testing.assert_close(
            global_mean(pool, strip), x.mean((2, 3), keepdim=True), rtol=1e-5, atol=1e-6
        )
        mean = x.mean((2, 3), keepdim=True)
        var = x.var((2, 3), unbiased=False, keepdim=True)
        expected = (strip - mean) / torch.sqrt(var + norm.eps)
        expected = expected * norm.weight[:, None, None] + norm.bias[:, None, None]
        torch.testing.assert_close(instance_norm(norm, strip), expected, rtol=1e-5, atol=1e-5)


def test_replaying_without_a_recording_says_what_is_missing():
    stats = SharedStatistics(recording=False)
    with sharing_statistics(stats), pytest.raises(RuntimeError, match="record a pass"):
        global_mean(torch.nn.Identity(), torch.rand(1, 2, 3, 3))


def test_the_context_ends_with_the_block():
    stats = SharedStatistics()
    with sharing_statistics(stats):
        pass
    global_mean(torch.nn.Identity(), torch.rand(1, 2, 3, 3))
    assert len(stats) == 0
