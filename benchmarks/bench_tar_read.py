"""Benchmark: reading shards with datascale's tar reader against Python's tarfile.

The same shards (real-photo JPEGs at the demo world's 64 px and at photo size,
about 500x375), read two ways in one process, rounds interleaved:

* tarfile: the stream reader ``read_shard`` used before (``tarfile.open(mode="r|")``,
  ``extractfile(info).read()`` for each regular member);
* datascale: ``datascale.formats.tarstream.iter_regular_members``.

For each it times ``read_shard`` over every shard (members/s) and one epoch of
the training loader in this process (``num_workers: 0``, so the CPU time per
image is the whole pipeline's: reading, shuffling, decoding, cropping, batching).

    .venv/bin/python benchmarks/bench_tar_read.py --images 4000 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_loader import PHOTOS, Clock, jpeg_folder, warm_page_cache
import datascale.formats.wds as wds


def tarfile_members(handle):
    """The regular members of a tar through Python's tarfile (the reader before tarstream)."""
    with tarfile.open(fileobj=handle, mode="r|") as tar:
        for info in tar:
            if info.isreg():
                yield info.name, tar.extractfile(info).read()


@contextlib.contextmanager
def reader(name: str):
    fast = wds.iter_regular_members
    if name == "tarfile":
        wds.iter_regular_members = tarfile_members
    try:
        yield
    finally:
        wds.iter_regular_members = fast


def read_all(shards: list[Path]) -> int:
    return sum(1 for path in shards for _ in wds.read_shard(path))


def loader_epoch(shards: Path, transform: str, size: int) -> int:
    from data_tools.loader.pipeline import LoaderConfig, make_train_loader
    cfg = LoaderConfig(batch_size=64, num_workers=0, shuffle_buffer=500, transform=transform,
                       image_size=size)
    return sum(len(batch.images) for batch in make_train_loader(shards, cfg, num_classes=len(PHOTOS)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import torch
    torch.set_num_threads(1)
    from data_tools.shards.write import ShardsConfig, write_shards
    sizes = {"64 px (the demo world)": ((64, 64), "demo", 56),
             "500x375 (photos)": ((500, 375), "paper", 299)}
    with tempfile.TemporaryDirectory() as tmp:
        for label, (size, transform, crop) in sizes.items():
            root = Path(tmp) / label.split()[0]
            tree = jpeg_folder(root / "tree", args.images, size=size)
            shards = root / "shards"
            write_shards(tree, shards, ShardsConfig(samples_per_shard=500, workers=1), progress=False)
            tars = sorted(shards.glob("*.tar"))
            mib = warm_page_cache(shards) / 2**20
            best: dict[tuple[str, str], float] = {}
            ratios: dict[str, list[float]] = {"read": [], "loader": []}
            for _ in range(args.rounds):
                seconds = {}
                for name in ("tarfile", "datascale"):
                    with reader(name):
                        for part, run in (("read", lambda: read_all(tars)),
                                          ("loader", lambda: loader_epoch(shards, transform, crop))):
                            with Clock() as clock:
                                count = run()
                            per_item = clock.cpu / count
                            seconds[name, part] = per_item
                            best[name, part] = min(best.get((name, part), np.inf), per_item)
                for part in ratios:
                    ratios[part].append(seconds["tarfile", part] / seconds["datascale", part])
            print(f"{label}: {args.images} samples in {len(tars)} shards, {mib:.1f} MiB; "
                  f"best of {args.rounds} rounds, CPU time per sample")
            for part, what in (("read", "read_shard"), ("loader", f"loader epoch ({transform}, {crop} px)")):
                old, new = best["tarfile", part], best["datascale", part]
                print(f"  {what:34s} tarfile {1e3 * old:.3f} ms, datascale {1e3 * new:.3f} ms: "
                      f"{old / new:.2f}x (median of per-round ratios {np.median(ratios[part]):.2f}x)")


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"({time.time() - started:.0f} s)")
