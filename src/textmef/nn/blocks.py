"""Convolutional and Mamba building blocks of the TextMEF fusion network.

Each block mirrors what the authors' code *runs* (not only what the paper draws); where the
two differ it says so, because reproducing the method means reproducing those details.

Element-wise work is done in place wherever autograd allows: activations overwrite the
convolution outputs they follow (a convolution's backward does not need its output), and
when no graph is being recorded (inference under ``torch.no_grad``) sums and the channel
swaps reuse buffers too. The results equal the plain out-of-place forms up to float rounding
(tests/test_fusionnet.py compares them with the code before this rewrite).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from textmef.nn.global_stats import global_mean, instance_norm
from textmef.nn.mamba import Mamba


def _recording() -> bool:
    """Whether autograd records this forward (then no saved tensor may be overwritten)."""
    return torch.is_grad_enabled()


def tokens_from_map(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C), row-major pixel order (a free view for channels_last)."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


def map_from_tokens(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W) in channels_last memory order (a view, no copy)."""
    return tokens.reshape(tokens.shape[0], height, width, tokens.shape[2]).permute(0, 3, 1, 2)


def _is_zero(x: object) -> bool:
    """The residual placeholder ``0`` that FusionNet passes before the first block."""
    return isinstance(x, (int, float)) and x == 0


class HINResBlock(nn.Module):
    """Half-instance-norm residual block: x + LReLU(conv(cat(IN(a), b))), (a, b) = halves."""

    def __init__(self, channels: int, slope: float = 0.2) -> None:
        super().__init__()
        self.conv_1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.InstanceNorm2d(channels // 2, affine=True)
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        y = F.leaky_relu(self.conv_1(x), self.slope, inplace=True)
        if _recording():
            a, b = y.chunk(2, dim=1)
            y = torch.cat([instance_norm(self.norm, a), b], dim=1)
            return x + F.leaky_relu(self.conv_2(y), self.slope, inplace=True)
        a = y[:, : y.shape[1] // 2]  # normalised into y's first half: no cat
        a.copy_(instance_norm(self.norm, a))
        return F.leaky_relu(self.conv_2(y), self.slope, inplace=True).add_(x)


class Encoder(nn.Sequential):
    """Conv3x3(3 -> C) followed by a HIN residual block."""

    def __init__(self, width: int) -> None:
        super().__init__(nn.Conv2d(3, width, 3, padding=1), HINResBlock(width))


class ChannelAttentionResidual(nn.Module):
    """conv3x3-ReLU-conv3x3, squeeze-excite gate, plus identity: ``se(res) * res + x``.

    The authors' ``network.py`` defines this class under the name ``ChannelAttention`` after
    importing DEA-Net's, so both the CGA fusion and the refine head use this version (which is
    why CGA has 80,347 parameters, not 6,491).
    """

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = channels // reduction
        self.process = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.squeeze = nn.Conv2d(channels, hidden, 1)
        self.excite = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        res = self.process(x)
        gate = torch.sigmoid(self.excite(F.relu(self.squeeze(global_mean(self, res)))))
        return torch.addcmul(x, gate, res)


class CGAFusion(nn.Module):
    """Content-guided attention mix-up fusion (DEA-Net) of two feature maps."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.spatial = nn.Conv2d(2, 1, 3, padding=1, padding_mode="reflect")
        self.channel = ChannelAttentionResidual(channels, reduction)
        self.pixel = nn.Conv2d(
            2 * channels, channels, 3, padding=1, padding_mode="reflect", groups=channels
        )
        self.project = nn.Conv2d(channels, channels, 1)

    def forward(self, under: torch.Tensor, over: torch.Tensor) -> torch.Tensor:  # noqa: D102
        s = under + over
        sattn = self.spatial(torch.cat([s.mean(1, keepdim=True), s.amax(1, keepdim=True)], 1))
        p1 = self.channel(s).add_(sattn)  # addcmul's output: not saved for backward
        # Interleave channels (s_0, p_0, s_1, p_1, ...) so each group of the conv sees one pair.
        # Stacked last in (B, H, W, C, 2) order: channels_last like the maps around it.
        b, c, h, w_ = s.shape
        paired = torch.stack([s.permute(0, 2, 3, 1), p1.permute(0, 2, 3, 1)], dim=-1)
        paired = paired.reshape(b, h, w_, 2 * c).permute(0, 3, 1, 2)
        # The authors apply sigmoid twice (inside PixelAttention and again in CGAFusion).
        w = self.pixel(paired).sigmoid_()
        # s + w * under + (1 - w) * over, as (s + over) + w * (under - over).
        if _recording():
            return self.project(torch.addcmul(s + over, w.sigmoid(), under - over))
        return self.project(s.add_(over).addcmul_(w.sigmoid_(), under - over))


class Refine(nn.Module):
    """Conv3x3 -> channel-attention residual block (reduction 3) -> Conv3x3(C -> 3)."""

    def __init__(self, channels: int, out_channels: int = 3) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(channels, channels, 3, padding=1)
        self.attention = ChannelAttentionResidual(channels, 3)
        self.conv_out = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.conv_out(self.attention(self.conv_in(x)))


class NormMamba(nn.Module):
    """LayerNorm then a single-direction Mamba (the authors discard the residual here)."""

    def __init__(self, width: int, d_state: int, expand: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mamba = Mamba(width, d_state=d_state, expand=expand)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.mamba(self.norm(tokens))


class AttentionMamba(nn.Module):
    """Spatial attention map in (0, 1) from pooled features scanned by two Mamba blocks."""

    def __init__(self, width: int, d_state: int, expand: int, slope: float = 0.1) -> None:
        super().__init__()
        c = width
        self.fe1 = nn.Conv2d(c, c, 3, padding=1)
        self.fe2 = nn.Conv2d(c, c, 3, padding=1)
        self.att_1 = nn.Conv2d(c, c, 1)
        self.max_to_token = nn.Conv2d(c, c, 1)
        self.avg_to_token = nn.Conv2d(c, c, 1)
        self.mamba_max = NormMamba(c, d_state, expand)
        self.mamba_avg = NormMamba(c, d_state, expand)
        self.att_2 = nn.Conv2d(2 * c, c, 1)
        self.att_3 = nn.Conv2d(c, c, 3, padding=1)
        self.att_4 = nn.Conv2d(c, c, 1)
        self.att_5 = nn.Conv2d(c, c, 3, padding=1)
        self.level_1 = nn.Conv2d(c, c, 1)
        self.level_2 = nn.Conv2d(2 * c, c, 3, padding=1)
        self.level_3 = nn.Conv2d(c, c, 3, padding=1)
        self.slope = slope

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        """LeakyReLU in place: every caller passes a fresh convolution output."""
        return F.leaky_relu(x, self.slope, inplace=True)

    @staticmethod
    def _pools(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.max_pool2d(x, 3, 2, 1), F.avg_pool2d(x, 3, 2, 1)

    def _scan_map(self, x: torch.Tensor, embed: nn.Conv2d, block: NormMamba) -> torch.Tensor:
        h, w = x.shape[-2:]
        return map_from_tokens(block(tokens_from_map(embed(x))), h, w)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return the attention map (same shape as ``features``)."""
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
        att_3 = self._act(self.att_3(att))
        att_3 = att_3 + level if _recording() else att_3.add_(level)
        att = self._act(self.att_4(att_3))
        att = F.interpolate(att, size=features.shape[-2:], mode="bilinear", align_corners=False)
        return self.att_5(att).sigmoid_()


class MutualGuidedBlock(nn.Module):
    """Pre-norm residual stream per exposure; the first C/2 channels swap between streams."""

    def __init__(self, width: int, d_state: int, expand: int) -> None:
        super().__init__()
        self.norm_under = nn.LayerNorm(width)
        self.norm_over = nn.LayerNorm(width)
        self.mamba_under = Mamba(width, d_state=d_state, expand=expand)
        self.mamba_over = Mamba(width, d_state=d_state, expand=expand)

    def forward(self, under, over, res_under, res_over):  # noqa: D102
        # The first block gets residuals 0: the sum would only copy the tokens.
        res_under = under if _is_zero(res_under) else under + res_under
        res_over = over if _is_zero(res_over) else over + res_over
        under = self.norm_under(res_under)
        over = self.norm_over(res_over)
        half = under.shape[-1] // 2
        if _recording():
            swapped_under = torch.cat([over[..., :half], under[..., half:]], -1)
            swapped_over = torch.cat([under[..., :half], over[..., half:]], -1)
        else:  # swap the first halves of the two fresh LayerNorm outputs in place
            first = under[..., :half].clone()
            under[..., :half] = over[..., :half]
            over[..., :half] = first
            swapped_under, swapped_over = under, over
        return (self.mamba_under(swapped_under), self.mamba_over(swapped_over), res_under, res_over)


class DeepFuseBlock(nn.Module):
    """Pre-norm bidirectional Mamba, then x + depthwise Conv3x3(x) on the map."""

    def __init__(self, width: int, d_state: int, expand: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mamba = Mamba(width, d_state=d_state, expand=expand, bidirectional=True)
        self.dwconv = nn.Conv2d(width, width, 3, padding=1, groups=width)

    def forward(self, tokens, residual, height: int, width: int) -> torch.Tensor:
        """Return the fused map (B, C, H, W); the residual stream ends here."""
        residual = tokens if _is_zero(residual) else tokens + residual
        # The authors' CrossMamba applies the same LayerNorm twice; kept for fidelity.
        x = map_from_tokens(self.mamba(self.norm(self.norm(residual))), height, width)
        return self.dwconv(x).add_(x)  # the conv's output is not saved for its backward
