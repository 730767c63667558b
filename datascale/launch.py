"""Launching training under the DeepSpeed launcher: locally on N ranks or on a cluster.

``datascale pretrain --nproc 2 ...`` (and ``finetune --nproc 2``) re-runs itself as ``deepspeed --num_gpus 2
--no_local_rank --module datascale.cli pretrain ...`` (the launcher starts one
process per rank with RANK/WORLD_SIZE/MASTER_ADDR set; on a CPU-only machine
DeepSpeed's CPU accelerator makes those CPU ranks). ``datascale launch
pretrain --hostfile FILE ...`` does the same across the nodes of a hostfile
(pdsh/ssh underneath, as DeepSpeed does it); ``--dry-run`` prints the command.
Stages: pretrain, finetune (DDP), dedup (the embedding step) and shards (``shards write``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import sys
from pathlib import Path
from typing import Sequence

from datascale import procs
from datascale.errors import ConfigError, DatascaleError

# Arguments of the calling command that only make sense to the launching process.
_LAUNCH_ONLY = {"--nproc": 1, "--hostfile": 1, "--num-nodes": 1, "--master-addr": 1,
                "--master-port": 1, "--dry-run": 0}


def free_port() -> int:
    """A TCP port that is free on this host right now (for the rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launched_by_deepspeed() -> bool:
    """True inside a process started by the DeepSpeed (or torchrun) launcher."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank_from_env(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size) from the arguments, else ``RANK``/``WORLD_SIZE``, else (0, 1)."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} of world size {world_size}: need 0 <= rank < world_size")
    return rank, world_size


def ensure_process_group_env() -> None:
    """Make a plain single process look like rank 0 of 1 for torch.distributed.

    Without these variables deepspeed.initialize falls back to MPI discovery
    (and fails without mpi4py); with them it rendezvous with itself over gloo.
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                      MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"),
                      MASTER_PORT=os.environ.get("MASTER_PORT", str(free_port())))


def read_hostfile(path: str | Path) -> dict[str, int]:
    """Parse a DeepSpeed hostfile (``host slots=N`` per line, # comments)."""
    path = Path(path)
    if not path.is_file():
        raise DatascaleError(f"hostfile not found: {path}")
    hosts: dict[str, int] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].startswith("slots=") or not parts[1][6:].isdigit():
            raise DatascaleError(f"{path}:{number}: expected 'HOSTNAME slots=N', got {raw!r}")
        if parts[0] in hosts:
            raise DatascaleError(f"{path}:{number}: host {parts[0]} listed twice")
        hosts[parts[0]] = int(parts[1][6:])
    if not hosts:
        raise DatascaleError(f"hostfile {path} lists no hosts")
    return hosts


def strip_launch_args(argv: Sequence[str]) -> list[str]:
    """Remove the launcher's own options from a command line (both --x v and --x=v)."""
    out, skip = [], 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in _LAUNCH_ONLY:
            skip = _LAUNCH_ONLY[name] if "=" not in arg else 0
            continue
        out.append(arg)
    return out


def deepspeed_command(stage_argv: Sequence[str], *, nproc: int = 1, hostfile: str | None = None,
                      num_nodes: int | None = None, master_addr: str | None = None,
                      master_port: int | None = None) -> list[str]:
    """The ``deepspeed`` launcher command that runs ``datascale <stage_argv>`` on every rank."""
    launcher = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or "deepspeed"
    cmd = [launcher]
    if hostfile:
        hosts = read_hostfile(hostfile)
        cmd += ["--hostfile", str(hostfile)]
        if num_nodes:
            if num_nodes > len(hosts):
                raise DatascaleError(f"--num-nodes {num_nodes} but the hostfile lists {len(hosts)} hosts")
            cmd += ["--num_nodes", str(num_nodes)]
        used = list(hosts.items())[: num_nodes or len(hosts)]
        short = [f"{host} (slots={slots})" for host, slots in used if slots < nproc]
        if short:
            raise ConfigError(f"--nproc {nproc} ranks per node, but the hostfile {hostfile} gives "
                              f"{', '.join(short)} fewer slots; lower --nproc to "
                              f"{min(s for _, s in used)} or raise the slots")
        if nproc > 1:
            cmd += ["--num_gpus", str(nproc)]
        if master_addr:
            cmd += ["--master_addr", master_addr]
    else:
        if nproc < 1:
            raise ConfigError(f"--nproc must be >= 1, got {nproc}")
        cmd += ["--num_gpus", str(nproc)]
    cmd += ["--master_port", str(master_port or free_port())]
    cmd += ["--no_local_rank", "--module", "datascale.cli", *stage_argv]
    return cmd


def run_launcher(cmd: Sequence[str], dry_run: bool = False) -> int:
    """Print (dry run) or run a launcher command; returns its exit code."""
    print(shlex.join(cmd), flush=True)
    if dry_run:
        return 0
    env = dict(os.environ)
    # The ranks must import this checkout (also when it is not installed).
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, env["PYTHONPATH"]]) if env.get("PYTHONPATH") else root
    return procs.run(list(cmd), env=env)  # the launcher and its ranks die with this process


def register_cli(subparsers) -> None:
    from datascale.cli import subcommand

    parser = subcommand(subparsers, "launch", _launch_main,
                        help="run a stage on many ranks or nodes through the DeepSpeed launcher",
                        description=(
                            "Build and run the `deepspeed` command that starts a datascale stage on "
                            "every rank. Example:\n  datascale launch --hostfile hosts.txt --dry-run "
                            "pretrain --config pretrain/jft300m_resnet101 --out runs/pretrain/300M"))
    parser.add_argument("--hostfile", help="DeepSpeed hostfile: 'HOST slots=N' per line")
    parser.add_argument("--num-nodes", type=int, help="use only the first N hosts of the hostfile")
    parser.add_argument("--nproc", type=int, default=1, help="ranks per node")
    parser.add_argument("--master-addr", help="address of rank 0 (default: the first host)")
    parser.add_argument("--master-port", type=int, help="rendezvous port (default: a free port)")
    parser.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    parser.add_argument("stage", choices=["pretrain", "finetune", "dedup", "shards"], help="the stage to launch")
    parser.add_argument("stage_args", nargs=argparse.REMAINDER,
                        help="arguments of the stage, as for `datascale STAGE ...`")


def _launch_main(args: argparse.Namespace) -> int:
    stage_argv = [args.stage, *args.stage_args]
    cmd = deepspeed_command(stage_argv, nproc=args.nproc, hostfile=args.hostfile,
                            num_nodes=args.num_nodes, master_addr=args.master_addr,
                            master_port=args.master_port)
    return run_launcher(cmd, dry_run=args.dry_run)
