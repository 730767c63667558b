"""`datascale shards verify` passes good shards and names every damaged or missing one."""

from __future__ import annotations

import io
import json
import tarfile

from data_tools.shards.report import verify_shards
from datascale.cli import main
from test_shards_data import small_shards


def _rewrite_member(path, member_suffix, index, new_bytes):
    """Replace the data of the index-th member ending in member_suffix (sizes kept valid)."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    targets = [i for i, (m, _) in enumerate(members) if m.name.endswith(member_suffix)]
    info, _ = members[targets[index]]
    info.size = len(new_bytes)
    members[targets[index]] = (info, new_bytes)
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))


def test_good_shards_verify_with_exit_code_zero(tmp_path, capsys):
    shards = small_shards(tmp_path, images=20, per_shard=6)
    assert main(["-q", "shards", "verify", str(shards), "--full"]) == 0
    assert "20 samples: OK" in capsys.readouterr().out


def test_damage_is_reported_per_shard_with_nonzero_exit(tmp_path, capsys):
    shards = small_shards(tmp_path, images=20, per_shard=6)
    names = sorted(json.loads((shards / "sizes.json").read_text()))
    # 1: a corrupt image that is not the first of its shard: only --full decodes it.
    _rewrite_member(shards / names[0], ".jpg", 2, b"\xff\xd8 broken jpeg")
    assert verify_shards(shards, full=False, progress=False)["ok"]
    report = verify_shards(shards, full=True, progress=False)
    assert list(report["problems"]) == [names[0]]
    assert "corrupt image" in report["problems"][names[0]][0]
    # 2: a truncated shard, 3: a deleted shard.
    blob = (shards / names[1]).read_bytes()
    (shards / names[1]).write_bytes(blob[: len(blob) // 3])
    (shards / names[2]).unlink()
    code = main(["-q", "shards", "verify", str(shards)])
    out = capsys.readouterr().out
    assert code == 1
    assert f"{names[1]}: truncated_tar" in out
    assert f"{names[2]}: missing_shard" in out
    assert "FAILED" in out
    # 4: a tar that is not listed anywhere.
    (shards / "shard-999999.tar").write_bytes((shards / names[3]).read_bytes())
    report = verify_shards(shards, progress=False)
    assert "tar not listed in sizes.json" in report["problems"]["shard-999999.tar"]


def test_verify_of_a_non_shards_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["shards", "verify", str(tmp_path)]) == 1
    assert "no manifest.parquet" in capsys.readouterr().err
