"""Benchmark: `shards write` from already-encoded JPEGs, images/s per core.

Writes the same folder of real-photo JPEGs (about 500x375, 40 KB) with 1 and
2 workers, and with the header-only image check, and prints images/s (wall)
and images per CPU-second (this process and its workers).

    .venv/bin/python benchmarks/bench_shards.py --images 4000
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench_loader import Clock, jpeg_folder, warm_page_cache
from data_tools.shards.write import ShardsConfig, write_shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree = jpeg_folder(Path(tmp) / "tree", args.images)
        megabytes = warm_page_cache(tree) / 2**20
        print(f"{args.images} JPEGs, {megabytes:.0f} MiB; 200 samples a shard")
        runs = [("1 worker, full decode check", 1, "decode"),
                ("2 workers, full decode check", 2, "decode"),
                ("1 worker, header check only", 1, "header")]
        for i, (label, workers, check) in enumerate(runs):
            cfg = ShardsConfig(workers=workers, image_check=check, samples_per_shard=200)
            with Clock() as clock:
                summary = write_shards(tree, Path(tmp) / f"out{i}", cfg, progress=False)
            assert summary["images"] == args.images
            print(f"  {label:30s} {args.images / clock.wall:7.0f} images/s wall, "
                  f"{args.images / clock.wall / workers:7.0f} per worker, "
                  f"{args.images / clock.cpu:7.0f} images per CPU-second")


if __name__ == "__main__":
    main()
