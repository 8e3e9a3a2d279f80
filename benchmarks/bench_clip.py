"""Cost of the CLIP parts on this machine, with a randomly initialised ViT-B/32.

Speed does not depend on the weights' values, so random weights measure what the released
ones would cost. Reports: image features per second (stage 1 cache), one prompt-learning
step (stage 1), and one L_clip forward+backward on a batch of fused images (stage 2).

    python benchmarks/bench_clip.py [--config ViT-B-32] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from textmef.clip import build_clip
from textmef.clip.loading import clip_fingerprint
from textmef.clip.prompts import init_prompts
from textmef.losses import CLIPExposureLoss


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="ViT-B-32")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clip = build_clip(args.config).eval().requires_grad_(False)
    results = {"config": args.config, "threads": torch.get_num_threads()}

    pixels = torch.randn(32, 3, 224, 224)
    with torch.no_grad():
        seconds = timed(lambda: clip.encode_image(pixels), 2)
    results["image_features_per_s"] = round(32 / seconds, 1)

    learner = init_prompts(clip, "learned", 16)
    optimizer = torch.optim.Adam(learner.parameters(), lr=5e-5, weight_decay=1e-3)
    features = F.normalize(torch.randn(16, clip.config.embed_dim), dim=-1)
    labels = torch.randint(0, 3, (16,))

    def prompt_step() -> None:
        loss = F.cross_entropy(learner(clip, features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    results["prompt_step_ms"] = round(1000 * timed(prompt_step, 10), 1)

    loss = CLIPExposureLoss(clip, learner.text_features(clip).detach())
    images = torch.rand(8, 3, 224, 224, requires_grad=True)

    def clip_loss_step() -> None:
        loss(images).backward()

    results["clip_loss_fwd_bwd_batch8_ms"] = round(1000 * timed(clip_loss_step, 3), 1)
    start = time.perf_counter()
    clip_fingerprint(clip)
    results["fingerprint_s"] = round(time.perf_counter() - start, 2)
    if args.json:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            print(f"{key:>28}: {value}")


if __name__ == "__main__":
    main()
