"""The DeepSpeed launcher commands datascale builds, and hostfile errors."""

from __future__ import annotations

import pytest

from datascale.errors import DatascaleError
from datascale import cli
from datascale.launch import deepspeed_command, read_hostfile, strip_launch_args


def test_local_command_runs_the_cli_module_on_n_ranks():
    cmd = deepspeed_command(["pretrain", "--out", "r"], nproc=2, master_port=29999)
    assert cmd[0].endswith("deepspeed")
    assert cmd[1:] == ["--num_gpus", "2", "--master_port", "29999", "--no_local_rank",
                       "--module", "datascale.cli", "pretrain", "--out", "r"]


def test_cluster_command_uses_the_hostfile(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# cluster\nnode1 slots=8\nnode2 slots=8  # second\n")
    assert read_hostfile(hostfile) == {"node1": 8, "node2": 8}
    cmd = deepspeed_command(["pretrain"], nproc=8, hostfile=str(hostfile), num_nodes=2,
                            master_addr="node1", master_port=1234)
    joined = " ".join(cmd)
    assert f"--hostfile {hostfile}" in joined and "--num_nodes 2" in joined
    assert "--master_addr node1" in joined and "--num_gpus 8" in joined


@pytest.mark.parametrize("text, message", [
    ("node1\n", "expected 'HOSTNAME slots=N'"),
    ("node1 slots=x\n", "expected 'HOSTNAME slots=N'"),
    ("node1 slots=2\nnode1 slots=2\n", "listed twice"),
    ("# nothing\n", "lists no hosts"),
])
def test_bad_hostfiles(tmp_path, text, message):
    hostfile = tmp_path / "hosts"
    hostfile.write_text(text)
    with pytest.raises(DatascaleError, match=message):
        read_hostfile(hostfile)


def test_too_many_nodes_is_an_error(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a slots=1\n")
    with pytest.raises(DatascaleError, match="--num-nodes 3"):
        deepspeed_command(["pretrain"], hostfile=str(hostfile), num_nodes=3)


def test_launch_only_options_are_stripped():
    argv = ["pretrain", "--nproc", "2", "--out", "x", "--dry-run", "--master-port=5", "--set", "a=b"]
    assert strip_launch_args(argv) == ["pretrain", "--out", "x", "--set", "a=b"]


def test_launch_dry_run_prints_the_command(tmp_path, capsys):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("gpu-a slots=8\ngpu-b slots=8\n")
    code = cli.main(["launch", "--hostfile", str(hostfile), "--nproc", "8", "--dry-run",
                     "pretrain", "--config", "pretrain/jft300m_resnet101", "--out", "runs/300M"])
    out = capsys.readouterr().out
    assert code == 0
    assert "--hostfile" in out and "--module datascale.cli pretrain --config pretrain/jft300m_resnet101" in out


def test_launch_missing_hostfile_is_a_clear_error(capsys):
    assert cli.main(["launch", "--hostfile", "/nope", "--dry-run", "pretrain"]) == 1
    assert "hostfile not found: /nope" in capsys.readouterr().err


def test_more_ranks_per_node_than_the_hostfile_has_slots_is_refused(tmp_path, capsys):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("gpu-a slots=2\ngpu-b slots=8\n")
    code = cli.main(["launch", "--hostfile", str(hostfile), "--nproc", "8", "--dry-run",
                     "pretrain", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "gpu-a (slots=2) fewer slots; lower --nproc to 2" in err


def test_dry_run_into_a_closed_pipe_exits_zero():
    import subprocess
    import sys
    code = ("import sys; from datascale import cli; sys.exit(cli.main(['study', 'studies/jft300m', '--dry-run']))")
    # pipefail: the pipeline fails if datascale does, though head has what it wanted.
    status = subprocess.run(["bash", "-o", "pipefail", "-c", f"{sys.executable} -c \"{code}\" | head -n 1"],
                            capture_output=True, text=True)
    assert status.stdout.startswith("study jft300m") and status.returncode == 0, status.stderr
