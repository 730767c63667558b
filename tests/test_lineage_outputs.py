"""Lineage records, output-folder reuse rules and atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from datascale.atomic import append_jsonl, atomic_path, write_json, write_text
from datascale.errors import DataError, OutputExistsError
from datascale.lineage import (config_record, content_hash, is_complete, mark_complete,
                               prepare_output_dir, read_config_record, sha256_file)


def test_content_hash_changes_with_content(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.txt").write_text("one")
    (folder / "b.txt").write_text("two")
    first = content_hash(folder)
    assert first == content_hash(folder)
    (folder / "b.txt").write_text("three")
    assert content_hash(folder) != first
    assert sha256_file(folder / "a.txt") == content_hash(folder / "a.txt")
    with pytest.raises(DataError, match="input not found"):
        content_hash(tmp_path / "missing")


def test_config_record_holds_inputs_with_hashes(tmp_path):
    src = tmp_path / "manifest.parquet"
    src.write_bytes(b"abc")
    record = config_record("shards", {"a": 1}, {"manifest": src}, extra={"lineage": {"k": 2}})
    assert record["stage"] == "shards" and record["config"] == {"a": 1}
    assert record["inputs"]["manifest"]["sha256"] == sha256_file(src)
    assert record["inputs"]["manifest"]["path"] == str(src.resolve())
    assert record["lineage"] == {"k": 2}


def test_output_dir_new_resume_complete_and_refuse(tmp_path):
    out = tmp_path / "out"
    record = config_record("synth", {"seed": 1})
    assert prepare_output_dir(out, record) == "new"
    assert read_config_record(out)["config"] == {"seed": 1}
    assert prepare_output_dir(out, config_record("synth", {"seed": 1})) == "resume"
    mark_complete(out, {"images": 3})
    assert is_complete(out)
    assert json.loads((out / "complete.json").read_text())["images"] == 3
    assert prepare_output_dir(out, config_record("synth", {"seed": 1})) == "complete"
    with pytest.raises(OutputExistsError, match="different config.*--force"):
        prepare_output_dir(out, config_record("synth", {"seed": 2}))
    assert prepare_output_dir(out, config_record("synth", {"seed": 2}), force=True) == "new"
    assert not is_complete(out)
    assert read_config_record(out)["config"] == {"seed": 2}


def test_foreign_folder_is_never_deleted(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    for force in (False, True):
        with pytest.raises(OutputExistsError, match="not written by datascale"):
            prepare_output_dir(out, config_record("synth", {}), force=force)
    assert (out / "thesis.tex").read_text() == "precious"


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "f.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_atomic_write_survives_kill_9(tmp_path):
    """A writer killed mid-write never leaves a partial file under the final name."""
    target = tmp_path / "big.txt"
    write_text(target, "old")
    code = (
        "import os, sys\n"
        "from datascale.atomic import atomic_path\n"
        f"with atomic_path({str(target)!r}) as tmp:\n"
        "    with open(tmp, 'w') as h:\n"
        "        h.write('x' * 1000); h.flush()\n"
        "        os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -9
    assert target.read_text() == "old"


def test_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "nan.json", {"loss": float("nan")})
    append_jsonl(tmp_path / "m.jsonl", {"step": 1, "loss": 0.5})
    append_jsonl(tmp_path / "m.jsonl", {"step": 2, "loss": 0.4})
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in lines] == [1, 2]


def test_config_yaml_is_plain_yaml(tmp_path):
    out = tmp_path / "o"
    prepare_output_dir(out, config_record("x", {"nested": {"list": [1, 2]}}))
    data = yaml.safe_load((out / "config.yaml").read_text())
    assert data["config"]["nested"]["list"] == [1, 2]
    assert os.access(out / "config.yaml", os.R_OK)
