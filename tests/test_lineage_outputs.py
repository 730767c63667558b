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


SETS = ["data.train=/data/subsets/240", "data.eval=/data/shards/eval"]


def _older_record(out, drop):
    """Rewrite out/config.yaml as an older datascale would have written it: without ``drop``
    (dotted keys) in its config."""
    record = read_config_record(out)
    for key in drop:
        *parents, leaf = key.split(".")
        section = record["config"]
        for name in parents:
            section = section[name]
        del section[leaf]
    (out / "config.yaml").write_text(yaml.safe_dump(record, sort_keys=False))
    return record


def test_a_run_written_before_a_setting_existed_is_still_the_same_run(tmp_path):
    """Upgrading datascale adds settings with defaults that keep the old behaviour: a finished
    pretraining run whose config.yaml predates the curriculum section must not be run again
    (in a study, --force would wipe it), and its record gains the settings."""
    from datascale.config import load_config, to_dict
    from scaling.pretrain.config import PretrainConfig

    cfg = load_config(PretrainConfig, "pretrain/demo", SETS)
    out = tmp_path / "run"
    assert prepare_output_dir(out, config_record("pretrain", cfg)) == "new"
    assert "_schema_defaults" not in read_config_record(out)      # in memory only
    mark_complete(out)
    created = _older_record(out, ["curriculum"])["created"]
    assert "curriculum" not in read_config_record(out)["config"]
    assert prepare_output_dir(out, config_record("pretrain", cfg)) == "complete"
    upgraded = read_config_record(out)
    assert upgraded["config"]["curriculum"] == to_dict(cfg.curriculum)
    assert upgraded["config"]["curriculum"]["name"] == "none"
    assert upgraded["created"] == created and "_schema_defaults" not in upgraded

    # The same old folder against a command that sets the new section off its default: a change.
    _older_record(out, ["curriculum"])
    changed = load_config(PretrainConfig, "pretrain/demo", [*SETS, "curriculum.name=efficienttrain"])
    with pytest.raises(OutputExistsError, match="curriculum.name: \\(not set\\) -> 'efficienttrain'"):
        prepare_output_dir(out, config_record("pretrain", changed))


def test_a_removed_or_unknown_setting_is_a_change(tmp_path):
    from datascale.config import load_config
    from scaling.pretrain.config import PretrainConfig

    cfg = load_config(PretrainConfig, "pretrain/demo", SETS)
    out = tmp_path / "run"
    prepare_output_dir(out, config_record("pretrain", cfg))
    mark_complete(out)
    record = read_config_record(out)
    record["config"]["schedule"]["retired_setting"] = 3   # a setting this version no longer has
    (out / "config.yaml").write_text(yaml.safe_dump(record, sort_keys=False))
    with pytest.raises(OutputExistsError, match="schedule.retired_setting: 3 -> \\(not set\\)"):
        prepare_output_dir(out, config_record("pretrain", cfg))
    # A missing setting whose value is not its default (steps is set by pretrain/demo) is a change.
    prepare_output_dir(out, config_record("pretrain", cfg), force=True)
    mark_complete(out)
    _older_record(out, ["schedule.steps"])
    with pytest.raises(OutputExistsError, match="schedule.steps"):
        prepare_output_dir(out, config_record("pretrain", cfg))


def test_schema_defaults_walk_nested_sections():
    from datascale.config import config_defaults, flatten
    from scaling.pretrain.config import PretrainConfig

    defaults = config_defaults(PretrainConfig)
    assert defaults["curriculum.name"] == "none"
    assert flatten({"a": {"b": 1, "c": {}}, "d": [1, 2]}) == {"a.b": 1, "d": [1, 2]}
