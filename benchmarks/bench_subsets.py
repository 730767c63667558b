"""Benchmark: `subsets make` on a simulated JFT-like manifest (keys/s and peak RSS).

The manifest (key, shard, labels, rank, bytes, sha1, ext) is generated on the
fly in chunks of 1M rows straight into a Parquet file, never whole in memory:
18,291 classes in a 5-level hierarchy, Zipf-tailed leaves, 1.26 labels per
image, 1,000 images a shard, ranks increasing, row groups of 2^18 rows (as
`shards write` writes them). Then the paper's nested
subsets 10M/30M/100M/300M, scaled to --keys (fractions 1/30, 1/10, 1/3, 1),
are made in a fresh process whose peak RSS is measured. The subset of all
rows is a hard link to the shards manifest; ``--sizes 0.0333333,0.1,0.3333333``
measures the case where every subset is written.

    .venv/bin/python benchmarks/bench_subsets.py --keys 20000000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES, CHUNK, PER_SHARD = 18291, 1_000_000, 1000


def make_vocabulary(root: Path, rng) -> np.ndarray:
    """classes.json: 5 levels (30, 300, 3000, 9000, rest); returns the leaf ids."""
    from data_tools.labels import Vocabulary
    levels = [30, 300, 3000, 9000, CLASSES - 12330]
    parents, start = [], 0
    for depth, n in enumerate(levels):
        if depth == 0:
            parents += [None] * n
        else:
            prev_start = start - levels[depth - 1]
            parents += (prev_start + rng.integers(0, levels[depth - 1], n)).tolist()
        start += n
    Vocabulary([f"class{i}" for i in range(CLASSES)], parents).save(root / "classes.json")
    return np.arange(CLASSES - levels[-1] - levels[-2], CLASSES)


def write_manifest(root: Path, keys: int, seed: int = 0) -> None:
    """Generate the shards-folder metadata (no tars) chunk by chunk."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datascale.lineage import config_record, mark_complete, prepare_output_dir
    rng = np.random.default_rng(seed)
    prepare_output_dir(root, config_record("shards", {"salt": "datascale"}))
    leaves = make_vocabulary(root, rng)
    cdf = np.cumsum(1.0 / np.arange(1, len(leaves) + 1) ** 1.05)
    cdf /= cdf[-1]
    schema = pa.schema([("key", pa.string()), ("shard", pa.string()),
                        ("labels", pa.list_(pa.int32())), ("rank", pa.float64()),
                        ("bytes", pa.int64()), ("sha1", pa.string()), ("ext", pa.string())])
    shards = (keys + PER_SHARD - 1) // PER_SHARD
    names = pa.array([f"shard-{i:06d}.tar" for i in range(shards)])
    from data_tools.shards.manifest import MANIFEST_ROW_GROUP, MANIFEST_WRITE_OPTIONS  # as `shards write`
    with pq.ParquetWriter(root / "manifest.parquet", schema, **MANIFEST_WRITE_OPTIONS) as writer:
        for lo in range(0, keys, CHUNK):
            n = min(CHUNK, keys - lo)
            rows = np.arange(lo, lo + n)
            counts = 1 + rng.binomial(3, 0.087, n)          # 1.26 labels per image
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
            values = leaves[np.searchsorted(cdf, rng.random(offsets[-1]))].astype(np.int32)
            ranks = np.sort(rng.uniform(lo / keys, (lo + n) / keys, n))
            hexed = rng.integers(0, 16, (n, 40), dtype=np.uint8)
            sha1 = np.frombuffer(b"0123456789abcdef", np.uint8)[hexed].tobytes()
            table = pa.table({
                "key": pa.array(rows).cast(pa.string()),
                "shard": pa.DictionaryArray.from_arrays(pa.array(rows // PER_SHARD), names)
                .cast(pa.string()),
                "labels": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
                "rank": ranks, "bytes": rng.integers(20_000, 200_000, n),
                "sha1": pa.FixedSizeBinaryArray.from_buffers(
                    pa.binary(40), n, [None, pa.py_buffer(sha1)]).cast(pa.string()),
                "ext": pa.array(["jpg"] * n)}, schema=schema)
            writer.write_table(table, row_group_size=MANIFEST_ROW_GROUP)
    sizes = {f"shard-{i:06d}.tar": min(PER_SHARD, keys - i * PER_SHARD) for i in range(shards)}
    (root / "sizes.json").write_text(json.dumps(sizes))
    mark_complete(root)


PAPER_SIZES = "0.0333333,0.1,0.3333333,1.0"  # 10M/30M/100M/300M of 300M


def run_subsets(shards: str, out: str, sizes: str) -> None:
    """Child process: make the subsets, print time and peak RSS as JSON."""
    from data_tools.subsets.make import make_subsets
    from data_tools.subsets.subset import SubsetsConfig
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    cfg = SubsetsConfig(sizes=sizes.split(","))
    subsets = make_subsets(shards, out, cfg, progress=False)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps({"seconds": elapsed, "cpu_seconds": cpu,
                      "images": [s.images for s in subsets],
                      "peak_rss_mb": after.ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=20_000_000)
    parser.add_argument("--workdir", default=None, help="folder for the generated manifest")
    parser.add_argument("--sizes", action="append", default=None,
                        help="subset fractions, comma-separated; repeat to measure several "
                             f"plans on one manifest (default: {PAPER_SIZES} and the same "
                             "without the last)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_subsets(*args.child)
        return
    plans = args.sizes or [PAPER_SIZES, PAPER_SIZES.rsplit(",", 1)[0]]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        shards = Path(tmp) / "shards"
        start = time.perf_counter()
        write_manifest(shards, args.keys)
        generated = time.perf_counter() - start
        size_mb = (shards / "manifest.parquet").stat().st_size / 2**20
        print(f"manifest: {args.keys:,} keys, {size_mb:,.0f} MiB parquet, "
              f"generated in {generated:.1f} s")
        for number, sizes in enumerate(plans):
            out = Path(tmp) / f"subsets{number}"
            done = subprocess.run([sys.executable, __file__, "--child", str(shards), str(out),
                                   sizes], capture_output=True, text=True, check=True)
            report(args.keys, sizes, json.loads(done.stdout.strip().splitlines()[-1]))


def report(keys: int, sizes: str, result: dict) -> None:
    rate = keys / result["seconds"]
    cpu_rate = keys / result["cpu_seconds"]
    print(f"subsets make (fractions {sizes}; images {result['images']}):")
    print(f"  wall {result['seconds']:.1f} s = {rate / 1e6:.2f} M keys/s (target >= 2 M keys/s)")
    print(f"  CPU  {result['cpu_seconds']:.1f} s = {cpu_rate / 1e6:.2f} M keys per CPU-second "
          "(all threads; the figure that does not depend on other load)")
    streamed = max(result["images"])
    print(f"  rows streamed {streamed:,} = {streamed / result['seconds'] / 1e6:.2f} M rows/s "
          "(the manifest prefix the largest subset covers)")
    print(f"  peak RSS {result['peak_rss_mb']:.0f} MiB (target <= 2048)")
    print(f"  at the wall rate 300M keys take {300e6 / rate / 60:.1f} min")


if __name__ == "__main__":
    main()
