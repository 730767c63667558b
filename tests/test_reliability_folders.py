"""Output folders: one writer at a time, children that die with their parent, names that
stay inside their parent, --force that only replaces its own stage's output, file modes
that follow the umask, a full disk named (docs/reliability.md)."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datascale import cli, lock
from datascale.atomic import write_bytes
from datascale.errors import DataError, OutputExistsError
from datascale.lineage import child_folder, config_record, prepare_output_dir


def _holder(folder: Path) -> subprocess.Popen:
    """Another process that holds the lock on ``folder`` until killed."""
    code = ("import sys, time\nfrom datascale import lock\n"
            f"with lock.hold({str(folder)!r}, 'test holder'):\n"
            "    print('held', flush=True)\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


STAGES = {
    "synth": ["synth", "--config", "world/tiny", "--out", "{out}"],
    "shards write": ["shards", "write", "{src}", "--out", "{out}"],
    "subsets make": ["subsets", "make", "{src}", "--sizes", "1", "--out", "{out}"],
    "pretrain": ["pretrain", "--set", "data.train={src}", "--set", "data.eval={src}", "--out", "{out}"],
    "finetune": ["finetune", "--task", "detection", "--init", "random", "--data", "{src}", "--out", "{out}"],
    "dedup index": ["dedup", "index", "{src}", "--out", "{out}"],
    "dedup audit": ["dedup", "audit", "{src}", "--testset", "{src}", "--out", "{out}"],
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_second_writer_of_a_folder_fails_fast_with_the_holder_named(stage, tmp_path, capsys):
    out = tmp_path / "out"
    holder = _holder(out)
    try:
        argv = [a.format(out=out, src=tmp_path / "src") for a in STAGES[stage]]
        started = time.time()
        code = cli.main(argv)
        err = capsys.readouterr().err
        assert code == 1 and "is being written by another datascale process" in err, err
        assert f"pid {holder.pid}" in err and time.time() - started < 30
    finally:
        holder.kill()
        holder.wait()
    # kill -9 released it: the folder can be locked again at once.
    with lock.hold(out, "after"):
        assert (out / lock.LOCK_FILE).read_text().startswith(f"pid {os.getpid()} ")


def test_the_lock_is_reentrant_skipped_by_ranks_above_0_and_leaves_no_empty_folder(tmp_path, monkeypatch):
    out = tmp_path / "new" / "run"
    with lock.hold(out):
        with lock.hold(out):  # the same process again (a stage inside `study`)
            pass
        assert str(out.resolve()) in os.environ[lock.ENV_HELD]  # children of this process skip it
    assert not out.exists()  # nothing was written: no folder left behind
    holder = _holder(tmp_path / "busy")
    try:
        monkeypatch.setenv("LOCAL_RANK", "1")
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "1")
        with lock.hold(tmp_path / "busy"):  # rank 1: the lock is rank 0's
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(lock.FolderLocked):
            with lock.hold(tmp_path / "busy"):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_a_child_dies_with_its_parent_even_after_kill_9(tmp_path):
    """As `study` runs DeepSpeed stages: kill -9 of the parent ends the child too."""
    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    parent = ("import sys\nfrom datascale import procs\n"
              f"sys.exit(procs.run([sys.executable, '-c', {child!r}]))\n")
    proc = subprocess.Popen([sys.executable, "-c", parent])
    deadline = time.time() + 60
    while not (pid_file.is_file() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    child_pid = int(pid_file.read_text())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            break
        # A zombie until reaped by init counts as gone.
        if Path(f"/proc/{child_pid}/stat").is_file() and ") Z" in Path(f"/proc/{child_pid}/stat").read_text():
            break
        time.sleep(0.05)
    else:
        os.kill(child_pid, signal.SIGKILL)
        pytest.fail("the child outlived its killed parent")


@pytest.mark.parametrize("name", ["../escaped", "/tmp/absolute", "..", ".", "", "a/b", ".hidden", "x\ny"])
def test_a_user_name_that_would_leave_its_parent_is_refused(tmp_path, name):
    with pytest.raises(DataError, match="cannot be a folder inside"):
        child_folder(tmp_path, name)
    assert child_folder(tmp_path, "猫-10K") == tmp_path / "猫-10K"
    (tmp_path / "link").symlink_to(tmp_path.parent)  # a plain name that resolves outside
    with pytest.raises(DataError):
        child_folder(tmp_path, "link")


def test_subsets_names_cannot_escape_out_even_with_force(tmp_path, capsys):
    from test_shards_data import small_shards

    shards = small_shards(tmp_path, images=12, per_shard=5)
    before = sorted(p.name for p in shards.iterdir())
    for names in ("../shards", str(shards), "ok,../../x"):
        code = cli.main(["subsets", "make", str(shards), "--out", str(tmp_path / "subsets"),
                         "--sizes", "4" if "," not in names else "4,8", "--names", names, "--force"])
        err = capsys.readouterr().err
        assert code == 1 and "cannot be a folder inside" in err, err
    assert sorted(p.name for p in shards.iterdir()) == before


def test_force_replaces_only_output_of_the_same_stage(tmp_path):
    folder = tmp_path / "shards"
    prepare_output_dir(folder, config_record("shards", {"a": 1}))
    (folder / "shard-000000.tar").write_bytes(b"data")
    with pytest.raises(OutputExistsError, match="datascale shards.*same stage"):
        prepare_output_dir(folder, config_record("subsets", {"a": 1}), force=True)
    assert (folder / "shard-000000.tar").is_file()
    with lock.hold(folder):
        assert prepare_output_dir(folder, config_record("shards", {"a": 2}), force=True) == "new"
        assert not (folder / "shard-000000.tar").exists() and (folder / lock.LOCK_FILE).is_file()
    # A lock file alone is not content: a fresh folder with only the lock is "new".
    other = tmp_path / "other"
    with lock.hold(other):
        assert prepare_output_dir(other, config_record("shards", {})) == "new"


@pytest.mark.parametrize("sizes, message", [
    ("nan", "not a size"), ("inf", "not a size"), ("1.5", "a count must be an integer"),
    ("0", "not a size"), ("-5", "not a size"), ("0.5,8", "mix counts and fractions"),
    ("2.5K5", "not a size"),
])
def test_impossible_subset_sizes_are_clear_errors(tmp_path, capsys, sizes, message):
    from test_shards_data import small_shards

    shards = small_shards(tmp_path, images=12, per_shard=5)
    code = cli.main(["subsets", "make", str(shards), "--out", str(tmp_path / "s"), "--sizes", sizes])
    err = capsys.readouterr().err
    assert code == 1 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def test_subset_sizes_all_and_fractions(tmp_path):
    from data_tools.subsets.make import make_subsets
    from data_tools.subsets.subset import SubsetsConfig, parse_sizes
    from test_shards_data import small_shards

    assert parse_sizes(["120", "all"], total=500) == (False, [120, 500])
    assert parse_sizes(["0.5", "all"]) == (True, [0.5, 1.0])
    shards = small_shards(tmp_path, images=12, per_shard=5)
    subsets = make_subsets(shards, tmp_path / "s", SubsetsConfig(sizes=["all"]), progress=False)
    assert [s.name for s in subsets] == ["all"] and subsets[0].images == 12


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        write_bytes(tmp_path / "shared.bin", b"x")
        assert stat.S_IMODE((tmp_path / "shared.bin").stat().st_mode) == 0o664
        os.umask(0o077)
        write_bytes(tmp_path / "private.bin", b"x")
        assert stat.S_IMODE((tmp_path / "private.bin").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_a_full_disk_during_shards_write_is_named_and_publishes_nothing(tmp_path, capsys, monkeypatch):
    from data_tools.shards import write as write_mod
    from test_shards_data import small_shards

    source = small_shards(tmp_path, images=12, per_shard=5)

    def full(path, samples):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(write_mod, "write_tar", full)
    out = tmp_path / "out"
    code = cli.main(["shards", "write", str(source), "--out", str(out), "--set", "workers=1"])
    err = capsys.readouterr().err
    assert code == 1 and "no space left on the device of" in err and str(out) in err, err
    assert not list(out.glob("*.tar")) and not list(out.glob(".*.tmp"))
    assert not (out / "complete.json").exists()


def test_a_forked_worker_that_outlives_a_kill_9_does_not_keep_the_folder_locked(tmp_path):
    """A DataLoader worker is a fork of its stage: it must not inherit the folder's lock."""
    folder = tmp_path / "run"
    script = (
        "import os, sys, time\n"
        "from datascale import lock\n"
        f"with lock.hold({str(folder)!r}):\n"
        "    child = os.fork()\n"
        "    if child == 0:\n"
        "        time.sleep(60); os._exit(0)\n"
        "    print(child, flush=True)\n"
        "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    try:
        with pytest.raises(lock.FolderLocked):
            with lock.hold(folder):
                pass
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        os.kill(child, 0)  # the worker is still alive ...
        with lock.hold(folder):  # ... and the rerun gets the folder at once
            pass
    finally:
        os.kill(child, signal.SIGKILL)
