"""Child processes that end when the datascale process that started them dies.

``datascale study`` runs the DeepSpeed stages in child processes, and a
``--nproc`` stage runs the DeepSpeed launcher as one. If the parent is killed
(kill -9 included, which runs no cleanup), an orphaned child would keep
writing a run folder that a rerun also writes. So every child is started
through this module's small trampoline::

    python -m datascale.procs PARENT_PID COMMAND...

which asks Linux to send it SIGTERM when its parent dies
(``prctl(PR_SET_PDEATHSIG)``, kept across ``exec``), checks that the parent
is still the one that started it (it may have died already), then ``exec``s
the command. SIGTERM ends a datascale stage at once (its folder lock goes
with it), and the DeepSpeed launcher forwards it to its ranks.

Why a trampoline and not ``subprocess.Popen(preexec_fn=...)``: ``preexec_fn``
runs Python code between fork and exec, which is unsafe in a process with
threads (DataLoader, pyarrow and tqdm threads are common here) and is
documented as such. The trampoline is an ordinary ``exec``. The signal is
tied to the thread that started the child, so call :func:`run` from the
main thread. On systems without ``prctl`` the command runs unguarded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from typing import Mapping, Sequence

_PR_SET_PDEATHSIG = 1
# Threads per process for a child that shares the machine with others (``datascale study
# --jobs N``); the fine-tuning stages default to it (scaling.finetune.loop.choose_threads).
THREADS_ENV = "DATASCALE_THREADS"


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def guarded(cmd: Sequence[str]) -> list[str]:
    """``cmd`` wrapped in the trampoline: it dies with this process."""
    return [sys.executable, "-m", "datascale.procs", str(os.getpid()), *cmd]


def run(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """Run ``cmd`` to the end as a guarded child; returns its exit code."""
    return subprocess.run(guarded(list(cmd)), env=None if env is None else dict(env)).returncode


def start(cmd: Sequence[str], env: Mapping[str, str] | None = None, output=None) -> subprocess.Popen:
    """Start ``cmd`` as a guarded child and return at once; ``output``: a file for its
    stdout and stderr together (default: this process's)."""
    return subprocess.Popen(guarded(list(cmd)), env=None if env is None else dict(env),
                            stdin=subprocess.DEVNULL, stdout=output,
                            stderr=None if output is None else subprocess.STDOUT)


def _trampoline(argv: list[str]) -> None:
    parent, cmd = int(argv[0]), argv[1:]
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the signal was armed
        sys.exit(143)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses
    _trampoline(sys.argv[1:])
