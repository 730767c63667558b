"""Step time of `datascale finetune` per task and mode at demo resolution, 1 vs 2 CPU threads.

    .venv/bin/python benchmarks/bench_finetune.py [--world WORLD] [--steps 10]

Without --world it renders the tiny synthetic world (`datascale synth --config
world/tiny`) into a temporary folder. For each task (demo config:
configs/finetune/TASK.yaml, resnet_demo) and mode it times optimizer steps
(median after 3 warm-up steps) with 1 and with 2 torch threads, side by side
in one run, then the evaluation of the original test set, and prints the
projected time of one demo run (steps x step time + evaluation).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from datascale.config import load_config
from datascale.cli import main as datascale
from scaling.finetune.loop import initial_backbone, prepare
from scaling.tasks import get_task
from scaling.tasks.config import FinetuneConfig

TASKS = ("detection", "segmentation", "pose")


def step_times(task_name: str, world: Path, mode: str, threads: int, steps: int) -> tuple[list[float], float, object]:
    """(seconds per optimizer step after 3 warm-up steps, seconds to evaluate the test set, config)."""
    torch.set_num_threads(threads)
    cfg = load_config(FinetuneConfig, f"finetune/{task_name}",
                      ["init=random", f"mode={mode}", f"data.root={world / task_name}"])
    task = get_task(task_name)
    backbone, meta = initial_backbone(cfg, task.dilation(cfg))
    model, train_set, tests = prepare(task, cfg, backbone, meta)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    n = cfg.train.batch_size
    batches = [task.collate([train_set[(i * n + j) % len(train_set)] for j in range(n)]) for i in range(4)]
    model.train()
    times = []
    for step in range(3 + steps):
        started = time.perf_counter()
        loss = sum(task.loss(model, batches[step % len(batches)]).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= 3:
            times.append(time.perf_counter() - started)
    started = time.perf_counter()
    task.evaluate(model, tests["original"], cfg, cache={})
    return times, time.perf_counter() - started, cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, help="a synthetic world folder (default: render world/tiny)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per setting")
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    world = args.world
    if world is None:
        world = Path(tmp.name) / "world"
        assert datascale(["-q", "synth", "--config", "world/tiny", "--out", str(world)]) == 0
    print(f"machine: {len(os.sched_getaffinity(0))} cores usable, load average {os.getloadavg()[0]:.2f}; "
          f"torch {torch.__version__}; world {world}")
    print(f"{'task':<13}{'mode':<10}{'batch':>6}{'px':>5}{'1 thread ms/step':>18}{'2 threads ms/step':>19}"
          f"{'2t/1t':>7}{'eval s':>8}{'demo run s':>12}")
    for task_name in TASKS:
        for mode in ("frozen", "finetune"):
            one, eval_one, cfg = step_times(task_name, world, mode, 1, args.steps)
            two, eval_two, _ = step_times(task_name, world, mode, 2, args.steps)
            evaluation = min(eval_one, eval_two)
            fast = min(statistics.median(one), statistics.median(two))
            size = cfg.pose.input_size if task_name == "pose" else cfg.data.image_size
            print(f"{task_name:<13}{mode:<10}{cfg.train.batch_size:>6}{size:>5}"
                  f"{1000 * statistics.median(one):>18.1f}{1000 * statistics.median(two):>19.1f}"
                  f"{statistics.median(two) / statistics.median(one):>7.2f}{evaluation:>8.2f}"
                  f"{cfg.train.steps * fast + evaluation:>12.1f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
