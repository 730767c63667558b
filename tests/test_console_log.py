"""Each run folder keeps its console log, and a refused rerun says what differs."""

from __future__ import annotations

import pytest

from datascale import cli
from datascale.console_log import CONSOLE_LOG
from datascale.errors import OutputExistsError
from datascale.lineage import config_record, content_hash, lineage_differences, prepare_output_dir

SMALL = ["pretrain.images=240", "eval.images=20", "detection.train=8", "detection.val=4", "detection.test=12",
         "segmentation.train=8", "segmentation.val=4", "segmentation.test=12", "pose.train=8", "pose.val=4",
         "pose.test=12", "duplicates.fraction=0.1"]


def _synth(out, *extra: str) -> int:
    return cli.main(["-q", "synth", "--config", "world/demo", "--out", str(out),
                     *[f"--set={s}" for s in [*SMALL, *extra]]])


def test_a_run_folder_keeps_its_console_log_and_a_refused_rerun_names_the_keys(tmp_path, capsys):
    world = tmp_path / "world"
    assert _synth(world) == 0
    log = (world / CONSOLE_LOG).read_text()
    # The command line, the stage's INFO records although -q quiets the terminal, the end.
    assert f"datascale -q synth --config world/demo --out {world}" in log
    assert "INFO data_tools.synth.world: rendering" in log and log.rstrip().endswith("== done")
    # The log is not content: the world's hash (which shard writing pins) ignores it.
    before = content_hash(world)
    assert _synth(world) == 0  # a rerun appends
    log = (world / CONSOLE_LOG).read_text()
    assert log.count("== done") == 2 and "nothing to do" in log
    assert content_hash(world) == before

    capsys.readouterr()
    assert _synth(world, "seed=3", "pose.test=14") == 1
    err = capsys.readouterr().err
    assert "config.seed: 0 -> 3" in err and "config.pose.test: 12 -> 14" in err, err
    assert "config.detection" not in err  # only what differs
    assert "== stopped: OutputExistsError" in (world / CONSOLE_LOG).read_text().split("\n== 20")[-1]

    # --force replaces the output but keeps the folder's history.
    assert cli.main(["-q", "synth", "--config", "world/demo", "--out", str(world), "--force",
                     *[f"--set={s}" for s in [*SMALL, "seed=3"]]]) == 0
    log = (world / CONSOLE_LOG).read_text()
    assert log.count("\n== 20") == 4 and "--force: replacing" in log


def test_a_failed_start_leaves_nothing_that_blocks_the_retry(tmp_path, capsys):
    world = tmp_path / "world"
    assert _synth(world, "pretrain.images=40", "duplicates.fraction=0.9") == 2  # more copies than images
    assert "config error" in capsys.readouterr().err
    assert not world.exists()
    assert _synth(world) == 0 and (world / CONSOLE_LOG).is_file()


def test_lineage_differences_name_config_and_input_changes(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("one")
    old = config_record("shards", {"a": 1, "nested": {"b": [1, 2], "c": "x"}}, {"data": data})
    data.write_text("two")
    new = config_record("shards", {"a": 1, "nested": {"b": [1, 3], "d": True}}, {"data": data})
    lines = lineage_differences(old, new)
    assert lines[0] == "config.nested.b: [1, 2] -> [1, 3]"
    assert "config.nested.c: 'x' -> (not set)" in lines and "config.nested.d: (not set) -> True" in lines
    assert any(line.startswith("inputs.data.sha256: ") for line in lines) and len(lines) == 4
    many = lineage_differences(config_record("s", {f"k{i}": i for i in range(20)}), config_record("s", {}))
    assert len(many) == 13 and many[-1] == "... and 8 more"
    out = tmp_path / "out"
    prepare_output_dir(out, old)
    with pytest.raises(OutputExistsError, match=r"What differs.*\n  config.nested.b: \[1, 2\] -> \[1, 3\]"):
        prepare_output_dir(out, new)
