"""`datascale synth` through the real entry point: help, success, no-op re-run, config errors
naming the key, refusal of a folder made with another config, and --force."""

import json

import pytest

from datascale.cli import main

FAST = ["--config", "world/tiny", "--workers", "1", "--set", "pretrain.images=60", "--set", "eval.images=5",
        "--set", "detection.test=10", "--set", "segmentation.test=10", "--set", "pose.test=10"]


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["synth", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--out", "--workers", "--set", "--force", "world/demo", "labels.noise_rate"):
        assert option in text


def test_synth_writes_a_world_and_a_rerun_is_a_no_op(tmp_path, capsys):
    out = tmp_path / "world"
    assert main(["synth", *FAST, "--out", str(out)]) == 0
    summary = json.loads((out / "world.json").read_text())
    assert summary["images"]["pretrain"] == 60
    assert "planted duplicates" in capsys.readouterr().out
    stamp = (out / "complete.json").read_text()
    assert main(["synth", *FAST, "--out", str(out)]) == 0
    assert "already complete" in capsys.readouterr().out
    assert (out / "complete.json").read_text() == stamp


def test_unknown_set_key_exits_2_and_names_it(tmp_path, capsys):
    code = main(["synth", *FAST, "--set", "labels.noisy_rate=0.3", "--out", str(tmp_path / "w")])
    assert code == 2
    err = capsys.readouterr().err
    assert "labels.noisy_rate" in err and "noise_rate" in err
    assert not (tmp_path / "w").exists()


def test_impossible_value_exits_2_and_names_the_key(tmp_path, capsys):
    assert main(["synth", *FAST, "--set", "duplicates.fraction=2", "--out", str(tmp_path / "w")]) == 2
    assert "duplicates.fraction" in capsys.readouterr().err
    assert main(["synth", *FAST, "--workers", "0", "--out", str(tmp_path / "w")]) == 2


def test_folder_with_another_config_is_refused_unless_forced(tmp_path, capsys):
    out = tmp_path / "world"
    assert main(["synth", *FAST, "--out", str(out)]) == 0
    before = (out / "pretrain" / "labels.jsonl").read_text()
    assert main(["synth", *FAST, "--set", "seed=5", "--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert (out / "pretrain" / "labels.jsonl").read_text() == before
    assert main(["synth", *FAST, "--set", "seed=5", "--out", str(out), "--force"]) == 0
    assert (out / "pretrain" / "labels.jsonl").read_text() != before
    assert json.loads((out / "world.json").read_text())["seed"] == 5


def test_a_folder_datascale_did_not_write_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["synth", *FAST, "--out", str(tmp_path)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"
