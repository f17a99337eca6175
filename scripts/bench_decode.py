"""Decode throughput on an image folder: the harness's embedding path vs a bare encode loop.

    python scripts/bench_decode.py                               # 1,000 generated JPEGs, ViT-B-32:random
    python scripts/bench_decode.py --folder DIR --arch ViT-B-32:random --n 1000

The harness rate is ``clip_robustness.fixtures.embed.image_embeddings`` on the folder with the disk cache off: file
digests (item ids), decoding, preprocessing (in ``clip_robustness.fixtures.pipeline``'s worker threads) and the forward.
The bare rate is ``model.encode_image`` alone on the same batches, decoded and preprocessed beforehand
(untimed) with open_clip's transform on the calling thread. Both embeddings must be equal bitwise (same
pixels, same batches). The two alternate chunk by chunk (ABBA), so a changing machine load hits both alike;
``--repeats`` counts each chunk's fastest pass (on a busy 2-core machine one pass varies by about +-30%). Without ``--folder`` a folder of JPEGs of 256-500 px (smooth noise, quality 90,
ten class folders) is generated once under ``--work``. Threads: ``OMP_NUM_THREADS`` as given; decode
workers: ``ROBUSTNESS_DECODE_WORKERS`` or the automatic choice. ``measure_decode`` is what
``scripts/bench_suite.py`` calls.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repo root on sys.path


def make_folder(root: Path, n: int = 1000, *, seed: int = 0) -> Path:
    """``n`` JPEGs of 256-500 px per side in ten class folders under ``root`` (kept when already there)."""
    from PIL import Image

    root = Path(root)
    if len(list(root.glob("*/*.jpg"))) >= n:
        return root
    rng = np.random.default_rng(seed)
    for k in range(n):
        h, w = (int(v) for v in rng.integers(256, 501, 2))
        low = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)  # smooth, photo-like sizes
        image = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC)).astype(np.int16)
        image = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
        folder = root / f"class_{k % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{k:05d}.jpg", quality=90)
    return root


def measure_decode(folder: Path, arch: str = "ViT-B-32:random", n: int = 1000, *, repeats: int = 1) -> dict:
    """Images per second of the harness path and of the bare encode loop on the first ``n`` images of
    ``folder`` (an ImageFolder tree), their ratio, and what the numbers depend on (threads, load). With
    ``repeats`` > 1 each chunk's time is the fastest of its repeats (a busy machine only ever slows a run)."""
    import torch
    from PIL import Image

    from clip_robustness.fixtures.cache import EmbeddingCache
    from clip_robustness.fixtures.datasets import image_folder
    from clip_robustness.fixtures.embed import CHUNK, image_embeddings
    from clip_robustness.fixtures.models import load_model, parse_model_spec
    from clip_robustness.fixtures.pipeline import decode_workers

    model = load_model(parse_model_spec(arch))
    dataset = image_folder("bench", Path(folder)).head(n)
    if len(dataset) < n:
        raise ValueError(f"{folder} holds {len(dataset)} images, fewer than the {n} asked for")
    model.encode_images([np.zeros((64, 64, 3), np.uint8)] * 8)  # warm-up (first-call allocations), timed by neither
    load_before = os.getloadavg()[0]
    size = getattr(model, "batch_size", 256)

    def harness(chunk: range) -> tuple[np.ndarray, float]:  # one cache chunk, as a run computes it
        start = time.perf_counter()
        emb = image_embeddings(model, dataset.subset(list(chunk), ""), EmbeddingCache(None))  # (B, D)
        return emb, time.perf_counter() - start

    def bare(chunk: range) -> tuple[np.ndarray, float]:  # the same batches, decoded and preprocessed untimed
        spans = [dataset.loader.paths[b:min(b + size, chunk.stop)] for b in range(chunk.start, chunk.stop, size)]
        batches = [torch.stack([model.preprocess(Image.open(p).convert("RGB")) for p in span]) for span in spans]
        start = time.perf_counter()
        with torch.inference_mode():
            out = [model.model.encode_image(x.to(model.device), normalize=True).float().cpu().numpy() for x in batches]
        return np.concatenate(out), time.perf_counter() - start

    # chunk by chunk (CHUNK items), the two paths alternating (ABBA): a changing machine load hits both alike
    chunks = [range(c, min(c + CHUNK, n)) for c in range(0, n, CHUNK)]
    took: dict = {(path, k): [] for path in (harness, bare) for k in range(len(chunks))}
    parts: dict = {}
    for r in range(repeats):
        for k, chunk in enumerate(chunks):
            for path in (harness, bare) if (k + r) % 2 == 0 else (bare, harness):
                emb, seconds = path(chunk)
                took[path, k].append(seconds)
                parts.setdefault((path, k), emb)
    harness_s, bare_s = (sum(min(took[path, k]) for k in range(len(chunks))) for path in (harness, bare))
    equal = all(np.array_equal(parts[harness, k], parts[bare, k]) for k in range(len(chunks)))
    return {
        "images": n, "arch": arch, "repeats": repeats,
        "harness_images_per_s": n / harness_s, "bare_images_per_s": n / bare_s,
        "ratio": bare_s / harness_s, "equal": bool(equal),
        "torch_threads": torch.get_num_threads(), "decode_workers": decode_workers(model.device),
        "cores": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="an ImageFolder tree (default: generate JPEGs under --work)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-decode"), help="where generated JPEGs go")
    parser.add_argument("--arch", default="ViT-B-32:random", help="a --model spec (a 224 px architecture)")
    parser.add_argument("--n", type=int, default=1000, help="images to measure")
    parser.add_argument("--repeats", type=int, default=1, help="passes; each chunk counts its fastest")
    args = parser.parse_args(argv)
    folder = args.folder or make_folder(args.work / "jpegs", args.n)
    r = measure_decode(folder, args.arch, args.n, repeats=args.repeats)
    print(f"{r['images']} images x {r['repeats']}, {r['arch']}, {r['torch_threads']} torch threads, "
          f"{r['decode_workers']} decode "
          f"workers, {r['cores']} cores, load {r['load_before']:.1f} -> {r['load_after']:.1f}")
    print(f"harness {r['harness_images_per_s']:.1f} img/s, bare encode loop {r['bare_images_per_s']:.1f} img/s, "
          f"ratio {r['ratio']:.2f}, embeddings equal: {r['equal']}")
    return 0 if r["equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
