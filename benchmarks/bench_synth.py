"""How fast the synthetic world renders: per-image cost by kind, and the whole demo world
with 1 worker and with all CPUs, side by side in one run (target: demo < 2 minutes on 2 cores).

    .venv/bin/python benchmarks/bench_synth.py [--config world/demo] [--items 300] [--skip-single]

With ``--learnability`` it also checks that the world rewards data: a small CNN is trained
for the same number of steps on a 10% and a 100% subset of the pretraining pool (noisy
labels) and scored by mAP on the clean eval set (several minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from datascale.config import load_config
from data_tools.synth.config import WorldConfig
from data_tools.synth.items import encode_jpeg, make_plan, render_item
from data_tools.synth.world import default_workers, generate_world

TARGET_SECONDS = 120.0


def per_image_costs(config: WorldConfig, items: int) -> list[tuple[str, float, float]]:
    """(kind, ms per image including JPEG/PNG encoding, ms of one JPEG encode) in this process."""
    plan = make_plan(config)
    rows = []
    for kind, split in (("pretrain", "all"), ("eval", "all"), ("detection", "train"),
                        ("segmentation", "train"), ("pose", "train")):
        limit = min(items, getattr(config, kind).images if kind in ("pretrain", "eval")
                    else getattr(config, kind).train)
        start = time.perf_counter()
        for index in range(limit):
            render_item(plan, kind, split, index)
        per_item = (time.perf_counter() - start) / limit * 1000
        size = getattr(config, kind).image_size
        image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
        start = time.perf_counter()
        for _ in range(200):
            encode_jpeg(image, config.render.jpeg_quality)
        rows.append((f"{kind} ({size}px)", per_item, (time.perf_counter() - start) / 200 * 1000))
    return rows


def whole_world(config: WorldConfig, workers: int) -> tuple[float, int, float]:
    """(seconds, images, MiB on disk) for one full generation into a temporary folder."""
    root = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    try:
        start = time.perf_counter()
        _, summary = generate_world(config, root / "world", workers=workers)
        seconds = time.perf_counter() - start
        size = sum(p.stat().st_size for p in (root / "world").rglob("*") if p.is_file()) / 2**20
        return seconds, summary["images"]["total"], size
    finally:
        shutil.rmtree(root, ignore_errors=True)


def learnability(world: Path, fractions: tuple[float, ...], steps: int) -> list[tuple[int, float]]:
    """(subset images, eval mAP) for a small CNN trained ``steps`` steps on each nested prefix."""
    import json

    import torch
    import torch.nn.functional as F
    from PIL import Image
    from sklearn.metrics import average_precision_score

    leaves = [c["id"] for c in json.loads((world / "classes.json").read_text()) if c["level"] == "leaf"]
    column = {c: i for i, c in enumerate(leaves)}

    def load(pool: str) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [json.loads(line) for line in (world / pool / "labels.jsonl").read_text().splitlines()]
        images = np.stack([np.asarray(Image.open(world / pool / r["image"])) for r in rows])
        targets = np.zeros((len(rows), len(leaves)), np.float32)
        for i, r in enumerate(rows):
            targets[i, [column[c] for c in r["labels"]]] = 1
        # 32x32 inputs keep this check to minutes on a laptop CPU.
        x = F.avg_pool2d(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1, 2)
        return x, torch.from_numpy(targets)

    train_x, train_y = load("pretrain")
    eval_x, eval_y = load("eval")
    results = []
    for fraction in fractions:
        size = max(1, int(round(fraction * len(train_x))))
        torch.manual_seed(0)
        model = _small_cnn(len(leaves))
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=steps)
        generator = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(steps):
            batch = torch.randint(0, size, (128,), generator=generator)
            x = train_x[batch]
            flip = torch.rand(len(x), generator=generator) < 0.5
            x[flip] = x[flip].flip(3)
            loss = F.binary_cross_entropy_with_logits(model(x), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        with torch.no_grad():
            scores = torch.cat([model(eval_x[i:i + 500]) for i in range(0, len(eval_x), 500)]).numpy()
        truth = eval_y.numpy()
        present = truth.sum(axis=0) > 0
        results.append((size, float(average_precision_score(truth[:, present], scores[:, present]))))
    return results


def _small_cnn(num_classes: int):
    import torch.nn as nn

    def stage(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    head = nn.Linear(128, num_classes)
    # Start at the label prior (~1/num_classes): otherwise sigmoid training spends its first
    # hundreds of steps just pushing every logit down.
    nn.init.constant_(head.bias, -float(np.log(num_classes)))
    return nn.Sequential(stage(3, 16), stage(16, 32), stage(32, 64), stage(64, 128),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="world/demo")
    parser.add_argument("--items", type=int, default=300, help="images per kind for the per-image costs")
    parser.add_argument("--skip-single", action="store_true", help="do not time the 1-worker run")
    parser.add_argument("--learnability", action="store_true",
                        help="also train a small CNN on 10%% and 100%% of the pool (same steps), eval mAP")
    parser.add_argument("--steps", type=int, default=300, help="training steps per subset for --learnability")
    args = parser.parse_args()
    config = load_config(WorldConfig, args.config)
    cpus = default_workers()
    print(f"bench_synth: config {args.config}, {cpus} CPUs available")
    print("\nper-image cost in one process (render + encode), and one JPEG encode of that size")
    print(f"{'kind':<24}{'ms/image':>10}{'ms/jpeg':>10}")
    for kind, ms, jpeg_ms in per_image_costs(config, args.items):
        print(f"{kind:<24}{ms:>10.2f}{jpeg_ms:>10.3f}")
    runs = [] if args.skip_single or cpus == 1 else [1]
    runs.append(cpus)
    results = {}
    print("\nwhole world (render, write every file, statistics)")
    print(f"{'workers':>8}{'seconds':>10}{'images':>9}{'images/s':>10}{'MiB':>8}")
    for workers in runs:
        seconds, images, mib = whole_world(config, workers)
        results[workers] = seconds
        print(f"{workers:>8}{seconds:>10.1f}{images:>9}{images / seconds:>10.0f}{mib:>8.0f}")
    if 1 in results and cpus in results and cpus > 1:
        print(f"\nspeed-up {cpus} workers vs 1: {results[1] / results[cpus]:.2f}x")
    verdict = "meets" if results[cpus] < TARGET_SECONDS else "MISSES"
    print(f"target: {args.config} in < {TARGET_SECONDS:.0f} s with {cpus} workers: {verdict} "
          f"({results[cpus]:.1f} s)")
    if args.learnability:
        root = Path(tempfile.mkdtemp(prefix="bench_synth_learn_"))
        try:
            generate_world(config, root / "world", workers=cpus)
            print(f"\nlearnability: small CNN, {args.steps} steps of 128, 32x32 inputs, noisy labels; "
                  "mAP on the clean eval set")
            print(f"{'subset images':>14}{'eval mAP':>10}")
            for size, score in learnability(root / "world", (0.1, 1.0), args.steps):
                print(f"{size:>14}{score:>10.4f}")
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
