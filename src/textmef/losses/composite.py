"""The stage 2 training loss: a weighted sum of fidelity, structure, colour and CLIP terms.

    total = mse · MSE(fused, gt)
          + mef_ssim · (1 − MEF-SSIM(fused; under, over))
          + ssim · (1 − SSIM(fused, gt))
          + colour · colour(fused, gt)
          + clip · L_clip(fused)

Only terms with a non-zero weight are computed. With the default weights (MSE alone) the
total is ``F.mse_loss(fused, gt)`` itself, bit for bit, so runs configured as before train
exactly as before.

All terms see the network's raw, unclamped output. Clamping to [0, 1] first would give
every out-of-range pixel a zero gradient, so the structure terms could not pull it back,
and the MSE term already penalises leaving the range. MEF-Net computes its MEF-SSIM loss
on its output as it is (a convex combination of the sources, so its clamp never acts);
inference clamps, and on in-range images the metrics and these terms agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from textmef.losses.colour_loss import DEFAULT_EPS, colour_loss
from textmef.losses.mef_ssim_loss import mef_ssim_loss
from textmef.losses.ssim_loss import ssim_loss

__all__ = ["TERMS", "FusionLoss"]

# Term names, in the order they are summed and reported; also the weights' keyword names.
TERMS = ("mse", "mef_ssim", "ssim", "colour", "clip")

_FORMULAS = {
    "mse": "MSE(fused, gt)",
    "mef_ssim": "(1 − MEF-SSIM(fused; under, over))",
    "ssim": "(1 − SSIM(fused, gt))",
    "colour": "colour(fused, gt)",
    "clip": "L_clip(fused)",
}


class FusionLoss(nn.Module):
    """Weighted sum of the stage 2 loss terms; returns the total and each term.

    Args:
        mse: weight of the mean squared error against the reference.
        mef_ssim: weight of 1 − MEF-SSIM against the two sources
            (:func:`textmef.losses.mef_ssim_loss`; images need sides >= 41 pixels).
        ssim: weight of 1 − SSIM against the reference (:func:`textmef.losses.ssim_loss`;
            sides >= 11 pixels).
        colour: weight of the colour term against the reference
            (:func:`textmef.losses.colour_loss`).
        clip: weight λ of the CLIP exposure loss; needs ``clip_loss``.
        clip_loss: a module mapping (B, 3, H, W) images to L_clip, e.g.
            :class:`textmef.losses.CLIPExposureLoss`.
        colour_eps: the colour term's guard for dark pixels.

    Raises:
        ValueError: a negative or non-finite weight, all weights zero, or a CLIP weight
            without ``clip_loss``.
    """

    def __init__(
        self,
        mse: float = 1.0,
        mef_ssim: float = 0.0,
        ssim: float = 0.0,
        colour: float = 0.0,
        clip: float = 0.0,
        clip_loss: nn.Module | None = None,
        colour_eps: float = DEFAULT_EPS,
    ) -> None:
        super().__init__()
        given = {"mse": mse, "mef_ssim": mef_ssim, "ssim": ssim, "colour": colour, "clip": clip}
        for name, weight in given.items():
            if not weight >= 0.0 or weight == float("inf"):  # `not >=` also catches NaN
                raise ValueError(f"loss weight {name} must be finite and >= 0, got {weight}")
        if clip and clip_loss is None:
            raise ValueError("a CLIP weight needs clip_loss (CLIP weights and prompts)")
        self.weights = {name: float(w) for name, w in given.items() if w != 0.0}
        if not self.weights:
            raise ValueError("every loss weight is 0: nothing to train on")
        # Registered only when used, so a CLIP given with weight 0 adds no state or cost.
        self.clip_loss = clip_loss if clip else None
        self.colour_eps = colour_eps

    def forward(
        self, fused: torch.Tensor, under: torch.Tensor, over: torch.Tensor, gt: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted total and the unweighted value of every active term.

        Args:
            fused: the network's output, (B, 3, H, W), unclamped.
            under: the under-exposed inputs, (B, 3, H, W) in [0, 1].
            over: the over-exposed inputs, likewise.
            gt: the references, likewise.

        Returns:
            ``(total, terms)``: the 0-dim loss to minimise, and a dict from term name (see
            :data:`TERMS`) to its 0-dim value before weighting, for the terms whose weight
            is not 0 only (in :data:`TERMS` order).
        """
        terms: dict[str, torch.Tensor] = {}
        for name in TERMS:
            if name in self.weights:
                terms[name] = self._term(name, fused, under, over, gt)
        total: torch.Tensor | None = None
        for name, value in terms.items():
            weighted = value if self.weights[name] == 1.0 else self.weights[name] * value
            total = weighted if total is None else total + weighted
        assert total is not None  # __init__ refuses an empty set of terms
        return total, terms

    def _term(
        self,
        name: str,
        fused: torch.Tensor,
        under: torch.Tensor,
        over: torch.Tensor,
        gt: torch.Tensor,
    ) -> torch.Tensor:
        if name == "mse":
            # Looked up on the module at call time, so the MSE is F.mse_loss exactly.
            return F.mse_loss(fused, gt)
        if name == "mef_ssim":
            return mef_ssim_loss(fused, (under, over))
        if name == "ssim":
            return ssim_loss(fused, gt)
        if name == "colour":
            return colour_loss(fused, gt, self.colour_eps)
        assert name == "clip" and self.clip_loss is not None
        return self.clip_loss(fused)

    def describe(self) -> str:
        """The active terms as a formula, e.g. ``1 · MSE(fused, gt) + 0.5 · (1 − ...)``."""
        return " + ".join(f"{self.weights[n]:g} · {_FORMULAS[n]}" for n in self.weights)

    def extra_repr(self) -> str:
        return ", ".join(f"{n}={w:g}" for n, w in self.weights.items())
