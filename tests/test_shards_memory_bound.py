"""The external shuffle holds at most ``bucket_records`` records: memory does not grow with input.

Measured with tracemalloc (Python allocations, deterministic) in a fresh
interpreter, on manifests of 1,500 and 4,500 rows that point at one small
photo, so the run costs metadata and tar writing only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = r"""
import json, sys, tracemalloc
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_shards_data import photo_bytes
# Import what the writer imports first, so that import-time allocations are not counted.
import pandas, pyarrow, pyarrow.parquet, tqdm, PIL.JpegImagePlugin, concurrent.futures, multiprocessing
from data_tools.shards.write import ShardsConfig, write_shards
tmp, rows, cap = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
tmp.mkdir(parents=True)
(tmp / "p.jpg").write_bytes(photo_bytes(0, size=16))
with open(tmp / "list.jsonl", "w") as handle:
    for i in range(rows):
        handle.write(json.dumps({{"key": f"k{{i}}", "image": "p.jpg", "labels": ["a"]}}) + "\n")
cfg = ShardsConfig(workers=1, bucket_records=cap, samples_per_shard=250, image_check="header")
tracemalloc.start()
summary = write_shards(tmp / "list.jsonl", tmp / "out", cfg, progress=False)
print(json.dumps({{"peak": tracemalloc.get_traced_memory()[1], "images": summary["images"]}}))
"""


def _peak(tmp: Path, rows: int, cap: int) -> int:
    script = _SCRIPT.format(tests=str(Path(__file__).parent))
    done = subprocess.run([sys.executable, "-c", script, str(tmp), str(rows), str(cap)],
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["images"] == rows
    return result["peak"]


@pytest.mark.slow
def test_peak_memory_is_bounded_by_bucket_records_not_by_input_size(tmp_path):
    small = _peak(tmp_path / "a", 1500, cap=250)
    large = _peak(tmp_path / "b", 4500, cap=250)
    uncapped = _peak(tmp_path / "c", 4500, cap=4500)
    assert large < 1.5 * small          # 3x the input, about the same memory
    assert uncapped > 2 * large         # the cap is what keeps it down
