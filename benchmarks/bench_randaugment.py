"""Benchmark: the curriculum's batched RandAugment against torchvision's RandAugment one image at a time.

Same real-photo crops, same magnitude and number of ops, one torch thread.
Baseline: ``torchvision.transforms.v2.RandAugment`` called on each image (as
the loader did before, with the image's seed in a forked torch RNG). Ours:
``CurriculumAugment.batch`` (each image its own draws, each operation one
batched call). Both side by side in one process, alternating, best of 3.

    .venv/bin/python benchmarks/bench_randaugment.py [--side 56] [--batch 64] [--magnitude 9]
"""

from __future__ import annotations

import argparse
import time

import matplotlib.cbook
import numpy as np
import torch
from PIL import Image


def crops(count: int, side: int) -> list[np.ndarray]:
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        photo = Image.open(handle).convert("RGB")
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        size = int(rng.integers(200, 500))
        left, top = int(rng.integers(0, photo.width - size)), int(rng.integers(0, photo.height - size))
        out.append(np.asarray(photo.crop((left, top, left + size, top + size)).resize((side, side))))
    return out


def per_image(images: list[np.ndarray], num_ops: int, magnitude: int) -> None:
    from torchvision.transforms import v2
    augment = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)
    for seed, image in enumerate(images):
        planar = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.ascontiguousarray(augment(planar).numpy().transpose(1, 2, 0))


def batched(images: list[np.ndarray], num_ops: int, magnitude: int) -> None:
    from data_tools.loader.curriculum import CurriculumAugment, CurriculumConfig, StageSetting
    augment = CurriculumAugment(CurriculumConfig(name="efficienttrain", num_ops=num_ops))
    side = images[0].shape[0]
    augment.batch(images, StageSetting(2, side, magnitude), [np.random.default_rng(s) for s in range(len(images))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=56)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--magnitude", type=int, default=9)
    parser.add_argument("--num-ops", type=int, default=2)
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = crops(args.batch, args.side)
    best = {"torchvision, one image at a time": float("inf"), "datascale, batched": float("inf")}
    runs = {"torchvision, one image at a time": per_image, "datascale, batched": batched}
    for _ in range(3):
        for name, run in runs.items():
            run(images, args.num_ops, args.magnitude)  # warm-up (imports, caches)
            start = time.process_time()
            for _ in range(args.batches):
                run(images, args.num_ops, args.magnitude)
            best[name] = min(best[name], (time.process_time() - start) / (args.batches * args.batch))
    print(f"RandAugment num_ops={args.num_ops} magnitude={args.magnitude}, {args.side} px, batch {args.batch}, "
          "1 thread, CPU ms per image (best of 3):")
    for name, seconds in best.items():
        print(f"  {name:34s} {1e3 * seconds:.3f} ms")
    names = list(best)
    print(f"  speed-up: {best[names[0]] / best[names[1]]:.1f}x")


if __name__ == "__main__":
    main()
