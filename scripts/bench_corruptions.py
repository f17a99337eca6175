"""Corruption throughput: images per second per family and severity, on world renders.

    python scripts/bench_corruptions.py                 # 64 px, 20 images, severities 1, 3, 5
    python scripts/bench_corruptions.py --size 224 --images 10 --severities 5

Prints one table (family, then images/s at each severity, then the mean) for the 19 ImageNet-C
families and the 10 depth-aware ones. Images larger than the 64 px renders are upscaled renders
(bicubic; depth nearest), so --size 224 also exercises the 224 px reference parameters. Runs in
one process and thread; pixels are computed directly (the per-process memo is bypassed).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repo root on sys.path


def world_images(n: int, size: int) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    from PIL import Image

    from clip_robustness.fixtures.corruption_cells import world_depth_source
    from clip_robustness.fixtures.corruptions3d import fit_depth
    from clip_robustness.fixtures.datasets import world_dataset

    ds = world_dataset("test", n=n)
    images, depths = ds.images(), world_depth_source(ds)(ds.item_ids)
    if size != images[0].shape[0]:
        images = [np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BICUBIC)) for im in images]
        depths = [fit_depth(d, (size, size)) for d in depths]
    return images, depths, list(ds.item_ids)


def main(argv: list[str] | None = None) -> int:
    from clip_robustness.fixtures.corruptions2d import ALL_FAMILIES, corrupt
    from clip_robustness.fixtures.corruptions3d import FAMILIES_3D, corrupt3d
    from clip_robustness.fixtures.world import FOV_DEG

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64, the world's)")
    parser.add_argument("--images", type=int, default=20, help="images per family and severity (default 20)")
    parser.add_argument("--severities", type=int, nargs="+", default=[1, 3, 5], help="severities (default 1 3 5)")
    parser.add_argument("--families", nargs="+", default=None, help="only these families")
    args = parser.parse_args(argv)
    if args.images < 1 or args.size < 16 or any(not 1 <= s <= 5 for s in args.severities):
        parser.error("need --images >= 1, --size >= 16 and severities in 1..5")

    import torch

    torch.set_num_threads(1)
    images, depths, ids = world_images(args.images, args.size)
    families = [("2d", f) for f in ALL_FAMILIES] + [("3d", f) for f in FAMILIES_3D]
    if args.families:
        unknown = sorted(set(args.families) - {f for _, f in families})
        if unknown:
            parser.error(f"unknown families {unknown}")
        families = [(k, f) for k, f in families if f in args.families]
    columns = " ".join(f"{'sev ' + str(s):>9s}" for s in args.severities)
    header = f"{'kind':4s} {'family':18s} {columns} {'mean':>9s}"
    print(f"corruption throughput, images/s, {args.size}x{args.size} px, {len(images)} images per cell, 1 thread")
    print(header)
    print("-" * len(header))
    for kind, family in families:
        rates = []
        for s in args.severities:
            start = time.perf_counter()
            for im, d, item in zip(images, depths, ids):
                if kind == "2d":
                    corrupt(im, family, s, item_id=item)
                else:
                    corrupt3d(im, family, s, depth=d, item_id=item, fov_deg=FOV_DEG)
            rates.append(len(images) / (time.perf_counter() - start))
        print(f"{kind:4s} {family:18s} " + " ".join(f"{r:9.0f}" for r in rates) + f" {np.mean(rates):9.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
