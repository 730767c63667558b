"""Benchmark: `shards write` on 1 and 2 ranks, per-image costs of its two passes.

Pass 1 (read the input's metadata, hash each key, append it to a bucket) is
timed on a large JSONL manifest whose rows point at a few files (pass 1 never
reads an image); pass 2 (read, decode-check and write each image into its
shard) on a folder of real-photo JPEGs. Each rank is its own process
(workers=1), the ranks meet through the output folder as on a cluster. Each
rank reads only its part of the input (a JSONL manifest: 1/W of its bytes),
so pass 1 costs ``read + hash + bucket`` per record over W; the two world
sizes show how close to 1/W it gets. Prints the per-image costs and
bytes that docs/benchmarks.md extrapolates to 300M images.

    .venv/bin/python benchmarks/bench_shards_distributed.py --records 300000 --images 3000
    .venv/bin/python benchmarks/bench_shards_distributed.py --records 300000 --bucket-records 1000 --pass1-only
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from pathlib import Path

from bench_loader import jpeg_folder, warm_page_cache


class _Stop(Exception):
    """Raised after pass 1 when only pass 1 is timed."""


def _rank(source: str, out: str, rank: int, world_size: int, pass1_only: bool, result: str,
          bucket_records: int) -> None:
    """One rank: write_shards with its two passes timed (wall and CPU of this process)."""
    import data_tools.shards.write as write
    from data_tools.shards import report

    times: dict = {}

    def timed(name, func):
        def run(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return func(*args, **kwargs)
            finally:
                times[name] = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
        return run

    def stop(*args, **kwargs):
        raise _Stop

    write._bucket_pass = timed("pass1", write._bucket_pass)
    write._run_tasks = stop if pass1_only else timed("pass2", write._run_tasks)
    report.finalize_shards = timed("finalize", report.finalize_shards)
    cfg = write.ShardsConfig(workers=1, samples_per_shard=200, bucket_records=bucket_records)
    started = time.perf_counter()
    try:
        write.write_shards(source, out, cfg, progress=False, rank=rank, world_size=world_size,
                           barrier_timeout=3600)
    except _Stop:
        pass
    times["total"] = time.perf_counter() - started
    Path(result).write_text(json.dumps(times))


def run_ranks(source: Path, out: Path, world_size: int, pass1_only: bool,
              bucket_records: int = 200_000) -> list[dict]:
    """Run ``world_size`` rank processes at once; each rank's timings."""
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_rank, args=(str(source), str(out), r, world_size, pass1_only,
                                                 str(out.parent / f"{out.name}.rank{r}.json"),
                                                 bucket_records))
             for r in range(world_size)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
        assert proc.exitcode == 0, f"a rank failed (exit {proc.exitcode})"
    return [json.loads((out.parent / f"{out.name}.rank{r}.json").read_text()) for r in range(world_size)]


def manifest(root: Path, records: int, pool: Path) -> Path:
    """A JSONL manifest of ``records`` distinct keys pointing at the JPEGs under ``pool``."""
    images = sorted(p.relative_to(root).as_posix() for p in pool.rglob("*.jpg"))
    path = root / "manifest.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(records):
            image = images[i % len(images)]
            handle.write(json.dumps({"key": f"img{i:09d}", "image": image,
                                     "labels": [image.split("/")[-2]]}) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000, help="manifest rows for pass 1")
    parser.add_argument("--images", type=int, default=1500, help="JPEGs for pass 2")
    parser.add_argument("--size", type=int, nargs=2, default=(800, 600),
                        help="JPEG width height (800x600 at quality 90: ~100 KB, JFT-like)")
    parser.add_argument("--bucket-records", type=int, default=200_000,
                        help="pass 1's bucket cap (a small one makes pass 1 split its buckets)")
    parser.add_argument("--pass1-only", action="store_true", help="skip the full runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tree = jpeg_folder(root / "photos", args.images, size=tuple(args.size))
        image_bytes = warm_page_cache(tree)
        rows = manifest(root, args.records, tree)
        print(f"pass 1: {args.records:,} manifest rows; pass 2: {args.images:,} JPEGs "
              f"{args.size[0]}x{args.size[1]}, {image_bytes / args.images / 1e3:.1f} KB each")
        pass1 = {}  # world size -> mean CPU seconds of a rank's pass 1 (wall waits for the others)
        for world_size in (1, 2):
            times = run_ranks(rows, root / f"p1w{world_size}", world_size, pass1_only=True,
                              bucket_records=args.bucket_records)
            pass1[world_size] = sum(t["pass1"]["cpu"] for t in times) / world_size
            slowest = max(t["pass1"]["wall"] for t in times)
            bucket_bytes = sum(p.stat().st_size for p in (root / f"p1w{world_size}").rglob("b*.jsonl"))
            print(f"  pass 1, {world_size} rank(s): slowest rank {slowest:.2f} s wall, "
                  f"{1e6 * pass1[world_size] / args.records:.1f} us CPU/record per rank; CPU per rank "
                  f"{[round(t['pass1']['cpu'], 2) for t in times]} s; bucket files "
                  f"{bucket_bytes / args.records:.0f} B/record")
        print(f"  pass 1 CPU of a rank on 2 ranks / on 1 rank: {pass1[2] / pass1[1]:.2f} (1/W = 0.50)")
        for world_size in () if args.pass1_only else (1, 2):
            out = root / f"w{world_size}"
            started = time.perf_counter()
            times = run_ranks(tree, out, world_size, pass1_only=False)
            wall = time.perf_counter() - started
            shard_bytes = sum(p.stat().st_size for p in out.glob("shard-*.tar"))
            print(f"  full run, {world_size} rank(s): {wall:.2f} s wall ({args.images / wall:.0f} images/s); "
                  f"pass 2 per rank {[round(t['pass2']['wall'], 2) for t in times]} s wall, "
                  f"{1e3 * sum(t['pass2']['cpu'] for t in times) / args.images:.2f} ms CPU/image; "
                  f"finalize {times[0]['finalize']['wall']:.2f} s; shards {shard_bytes / args.images / 1e3:.1f} "
                  f"KB/image, manifest {(out / 'manifest.parquet').stat().st_size / args.images:.0f} B/image")


if __name__ == "__main__":
    main()
