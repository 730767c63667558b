"""The whole scaling study from one config as a plan of commands, run resumably (``datascale study``).

    datascale study [configs/studies/demo.yaml] [--dry-run] [--jobs N]

world (if synthetic) -> shards -> nested subsets -> pretraining on every
subset (same schedule) -> dedup audit of every downstream test set against
the largest pool -> fine-tuning of every task x mode x backbone (+ random
init) x seed -> results -> fits -> plots -> report.md.

The study is a plan of ordinary ``datascale`` commands; ``--dry-run`` prints
them. Each command writes its own output folder with its lineage and skips
itself when that folder is complete for the same config and inputs, so a
re-run is a no-op, an interrupted study resumes, and a changed config redoes
exactly the stages (and the downstream stages) whose config or inputs changed
(the study passes ``--force`` so such folders are replaced, never mixed).
``--jobs N`` runs the independent runs of a stage N at a time
(scaling.study.runner).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from datascale.config import load_config
from datascale.errors import DatascaleError
from data_tools.dedup.schema import DedupConfig
from scaling.pretrain.config import PretrainConfig
from scaling.study.axes import PretrainPoint, expand, point_sets
from scaling.study.axes import defaults as axis_defaults
from datascale.lineage import COMPLETE_FILE
from scaling.tasks import check_task

log = logging.getLogger(__name__)

# Rough seconds per unit on 2 CPU cores, for the plan's time estimate only.
_ESTIMATE = {"synth": 10, "shards": 3, "subsets": 1, "pretrain": 65, "dedup": 4,
             "finetune": 9, "analysis": 11}
_PRETRAIN_STEPS = 800  # the demo's schedule, at which a pretraining run took _ESTIMATE["pretrain"]
# Fine-tuning: seconds per step by (task, mode) on 2 idle cores at demo scale (docs/benchmarks.md),
# plus loading and evaluation; a run's steps come from its train.steps override (60 by default).
_STEP_SECONDS = {("detection", "frozen"): 0.07, ("detection", "finetune"): 0.10,
                 ("segmentation", "frozen"): 0.035, ("segmentation", "finetune"): 0.045,
                 ("pose", "frozen"): 0.025, ("pose", "finetune"): 0.04}
_RUN_OVERHEAD, _DEFAULT_STEPS = 1.0, 60


def estimate_seconds(step: Step) -> float:
    """Rough seconds ``step`` takes on 2 CPU cores at demo scale (the plan's estimate only)."""
    if step.stage == "pretrain":
        return _ESTIMATE["pretrain"] * step.units
    if step.stage != "finetune":
        return _ESTIMATE.get(step.stage, 10)
    argv = step.argv
    task = argv[argv.index("--task") + 1] if "--task" in argv else ""
    mode = argv[argv.index("--mode") + 1] if "--mode" in argv else "finetune"
    steps = _DEFAULT_STEPS
    for arg in argv:  # later overrides win, as on the command line
        if arg.startswith("train.steps="):
            steps = int(arg.split("=", 1)[1])
    rate = _STEP_SECONDS.get((task, mode))
    return _ESTIMATE["finetune"] if rate is None else _RUN_OVERHEAD + rate * steps



@dataclass
class Step:
    """One ``datascale`` command of the plan."""

    stage: str
    label: str
    argv: list[str]
    out: Path
    distributed: bool = False      # runs through the DeepSpeed launcher on a cluster
    subprocess: bool = False       # runs in its own process (DeepSpeed's process group)
    marker: str = COMPLETE_FILE    # its completion marker in ``out`` (analysis steps share results/)
    units: float = 1.0             # its size against the estimate's unit (pretraining: steps / 800)
    needs: list[Path] = field(default_factory=list)  # outputs of steps of its stage it reads
    status: str = "pending"
    seconds: float = 0.0

    def command(self) -> str:
        return shlex.join(["datascale", *self.argv])


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    root: Path = Path("study")
    wall: dict[str, float] = field(default_factory=dict)  # seconds each stage took, as run
    jobs: int = 1                                          # runs at a time in the parallel stages

    def add(self, *args, **kwargs) -> Step:
        step = Step(*args, **kwargs)
        self.steps.append(step)
        return step


# --------------------------------------------------------------------------- plan


def _sets(pairs: list[str]) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


def _subset_name(size: str) -> str:
    return size.replace("/", "_")


def _task_paths(cfg, root: Path, task: str) -> tuple[Path, Path]:
    spec = cfg.tasks.get(task)
    data = Path(spec.data) if spec and spec.data else None
    test = Path(spec.test) if spec and spec.test else None
    if cfg.world is not None:
        entry = check_task(task)  # where the task's data lives in a synthetic world
        data = data or root / "world" / entry.world_data
        test = test or root / "world" / entry.world_test
    if data is None or test is None:
        raise DatascaleError(f"task {task}: give tasks.{task}.data and tasks.{task}.test in the study config")
    return data, test


def build_plan(cfg) -> Plan:
    """Every command of the study, in order, with its output folder."""
    root = Path(cfg.out)
    plan = Plan(root=root)
    if cfg.world is not None:
        world = root / "world"
        plan.add("synth", "world", ["synth", "--config", cfg.world.config, *_sets(cfg.world.set),
                                    "--out", str(world), "--force"], world)
        shards, evalset = root / "shards" / "pretrain", root / "shards" / "eval"
        common = ["--set", f"samples_per_shard={cfg.shards.samples_per_shard}", *_sets(cfg.shards.set)]
        plan.add("shards", "pretraining shards", ["shards", "write", str(world), *common,
                                                  "--out", str(shards), "--force"], shards)
        plan.add("shards", "eval shards", ["shards", "write", str(world), "--set", "split=eval", *common,
                                           "--out", str(evalset), "--force"], evalset)
    else:
        shards, evalset = Path(cfg.data.shards), Path(cfg.data.eval)
    names = [_subset_name(s) for s in cfg.subsets.sizes]
    base = _pretrain_base(cfg)
    points = expand(cfg.axes, names, base.model.arch, base.seed, base.curriculum.name)
    default = axis_defaults(cfg.axes, names, base.model.arch, base.seed, base.curriculum.name)
    for classes in cfg.axes.classes:  # nested subsets, and class-restricted ones at equal image counts
        folder = dataclasses.replace(default, classes=classes).subsets_folder(root)
        restrict = [] if classes == "all" else ["--top-classes", classes.split(":")[1]]
        plan.add("subsets", f"nested subsets ({classes} classes)" if restrict else "nested subsets",
                 ["subsets", "make", str(shards), "--sizes", ",".join(cfg.subsets.sizes), "--names", ",".join(names),
                  *restrict, "--out", str(folder), "--force"], folder / names[-1])
    backbones: dict[PretrainPoint, Path] = {}
    defaults_by_size = {p.size: root / "runs" / "pretrain" / p.name(default) for p in points
                        if dataclasses.replace(p, size=default.size) == default}
    for point in points:
        run = root / "runs" / "pretrain" / point.name(default)
        argv = ["pretrain", "--config", cfg.pretrain.config, *_sets(cfg.pretrain.set),
                *_sets(point_sets(point, base, defaults_by_size)),
                "--set", f"data.train={point.subsets_folder(root) / point.size}", "--set", f"data.eval={evalset}",
                "--out", str(run), "--force", "--no-progress"]
        if cfg.launcher == "deepspeed":
            argv = ["launch", "--hostfile", cfg.hostfile, "--nproc", str(cfg.pretrain.nproc), *argv]
        elif cfg.pretrain.nproc > 1:
            argv += ["--nproc", str(cfg.pretrain.nproc)]
        steps = next((int(v.split("=", 1)[1]) for v in reversed(point_sets(point, base, defaults_by_size))
                      if v.startswith("schedule.steps=")), base.schedule.steps)
        needs = ([defaults_by_size[point.init_from.split(":", 1)[1]]]
                 if point.init_from.startswith("study:") else [])
        plan.add("pretrain", f"pretrain {point.name(default)}", argv, run,
                 distributed=cfg.launcher == "deepspeed", subprocess=True,
                 units=steps / _PRETRAIN_STEPS, needs=needs)
        backbones[point] = run / "backbone.pt"
    cleaned = _plan_dedup(cfg, plan, root, root / "subsets" / names[-1], backbones[default])
    teachers = _plan_finetune(cfg, plan, root, {p.name(default): b for p, b in backbones.items()}, cleaned,
                              sorted({p.arch for p in points}, key=[p.arch for p in points].index), default.arch)
    if cfg.finetune.selftrain:
        _plan_selftrain(cfg, plan, root, default.subsets_folder(root) / names[-1], teachers)
    results = root / "results"
    # Exactly the planned runs: a folder left from an earlier config is not collected.
    runs = [str(s.out) for s in plan.steps if s.stage in ("pretrain", "finetune", "selftrain")]
    plan.add("analysis", "collect results", ["results", "collect", *runs,
                                             "--out", str(results / "results.parquet")], results,
             marker=f"collect.{COMPLETE_FILE}")
    plan.add("analysis", "fit curves", ["fit", "--results", str(results / "results.parquet"),
                                        *_sets(cfg.analysis.fit_set)], results, marker=f"fit.{COMPLETE_FILE}")
    plot = ["plot", "--results", str(results / "results.parquet"), *_sets(cfg.analysis.plot_set)]
    if cfg.analysis.plot_metrics:
        plot += ["--where", "metric=" + "|".join(cfg.analysis.plot_metrics)]
    if cfg.analysis.reference:
        plot += ["--reference", cfg.analysis.reference]
    plan.add("analysis", "plots and report", plot, results, marker=f"plot.{COMPLETE_FILE}")
    return plan


def _dedup_sets(cfg, largest_backbone: Path) -> list[str]:
    """The study's dedup overrides, plus the largest subset's backbone.pt for a ``backbone``
    embedder given no checkpoint (the audit runs after pretraining, so it exists by then)."""
    default = f"embedder.backbone.checkpoint={largest_backbone}"
    dedup = load_config(DedupConfig, cfg.dedup.config, [default, *cfg.dedup.set])
    uses_default = dedup.embedder.name == "backbone" and dedup.embedder.backbone.checkpoint == str(largest_backbone)
    return [default, *cfg.dedup.set] if uses_default else list(cfg.dedup.set)


def _plan_dedup(cfg, plan: Plan, root: Path, pool: Path, largest_backbone: Path) -> dict[str, Path]:
    """Index the largest pool, audit each task's test set; returns task -> cleaned test file."""
    if not cfg.dedup.enabled or not cfg.finetune.tasks:
        return {}
    index, audit = root / "dedup" / "index", root / "dedup" / "audit"
    dedup_sets = _dedup_sets(cfg, largest_backbone)
    argv = ["dedup", "index", str(pool), "--config", cfg.dedup.config, *_sets(dedup_sets),
            "--out", str(index), "--force"]
    if cfg.launcher == "deepspeed":
        # Embedding the pool is the costly part: every rank of the cluster embeds its
        # share of the shards; the index is then trained and filled from those blocks.
        plan.add("dedup", "embed the pool on the cluster",
                 ["launch", "--hostfile", cfg.hostfile, "--nproc", str(cfg.pretrain.nproc),
                  *argv, "--step", "embed"], index, distributed=True, subprocess=True)
    plan.add("dedup", "index the largest pool", argv, index)
    testsets, cleaned = [], {}
    for task in cfg.finetune.tasks:
        _, test = _task_paths(cfg, root, task)
        testsets += ["--testset", f"{task}={test}"]
        cleaned[task] = audit / task / "clean" / test.name
    argv = ["dedup", "audit", str(index), *testsets, "--config", cfg.dedup.config,
            *_sets(dedup_sets), "--out", str(audit), "--force"]
    truth = cfg.dedup.ground_truth or (str(root / "world" / "duplicates" / "planted.csv")
                                       if cfg.world is not None else "")
    if truth:
        argv += ["--ground-truth", truth]
    # Each test set gets its own folder (with complete.json) under the audit folder.
    plan.add("dedup", "audit the test sets", argv, audit / cfg.finetune.tasks[0])
    return cleaned


def _pretrain_base(cfg) -> PretrainConfig:
    """The pretraining config every point starts from (its arch, seed and schedule are the defaults)."""
    return load_config(PretrainConfig, cfg.pretrain.config, [*cfg.pretrain.set, "data.train=unused",
                                                              "data.eval=unused"])


def _variants(section) -> list[tuple[str, list[str]]]:
    """(run-name suffix, --set overrides) of every augmentation level x labelled fraction; the
    first value of each list is the default and adds no suffix."""
    out = []
    for i, level in enumerate(section.augment or [None]):
        for j, fraction in enumerate(section.labelled_fraction or [None]):
            suffix = (f"-{level}" if i else "") + (f"-f{float(fraction):g}" if j else "")
            sets = ([f"train.augment={level}"] if level else []) + \
                ([f"data.labelled_fraction={float(fraction):g}"] if fraction is not None else [])
            out.append((suffix, _sets(sets)))
    return out


def _plan_finetune(cfg, plan: Plan, root: Path, backbones: dict[str, Path], cleaned: dict,
                   archs: list[str], default_arch: str) -> list:
    """Every task x mode x backbone x (augmentation, labelled fraction) x seed, plus a random-init
    baseline per architecture. Returns the fine-tune-mode random-init runs of the default
    architecture (the self-training teachers)."""
    teachers = []
    inits: dict[str, tuple[Path | None, str]] = {name: (path, "") for name, path in backbones.items()}
    if cfg.finetune.random_init:
        for arch in archs:
            inits["random" if arch == default_arch else f"random-{arch}"] = (None, arch)
    for task in cfg.finetune.tasks:
        data, _ = _task_paths(cfg, root, task)
        spec = cfg.tasks.get(task)
        config = (spec.config if spec and spec.config else f"finetune/{task}")
        extra = _sets(cfg.finetune.set) + _sets(spec.set if spec else [])
        for mode in cfg.finetune.modes:
            for (init, (backbone, arch)), (suffix, variant) in itertools.product(inits.items(),
                                                                                 _variants(cfg.finetune)):
                for seed in (spec.seeds if spec and spec.seeds else cfg.finetune.seeds):
                    run = root / "runs" / "finetune" / task / mode / f"{init}{suffix}-seed{seed}"
                    argv = ["finetune", "--task", task, "--mode", mode, "--config", config,
                            "--data", str(data), "--seed", str(seed), *extra, *variant,
                            "--out", str(run), "--force"]
                    argv += (["--backbone", str(backbone)] if backbone else ["--init", "random", "--arch", arch])
                    if task in cleaned:
                        argv += ["--cleaned-test", str(cleaned[task])]
                    launched = cfg.launcher == "deepspeed"
                    if launched:  # data-parallel on one node of the cluster (scaling.finetune.distributed)
                        argv = ["launch", "--hostfile", cfg.hostfile, "--num-nodes", "1",
                                "--nproc", str(cfg.finetune.nproc), *argv]
                    step = plan.add("finetune", f"{task} {mode} {init}{suffix} seed {seed}", argv, run,
                                    distributed=launched, subprocess=launched)
                    if init == "random" and mode == "finetune":
                        teachers.append(step)
    return teachers


def _plan_selftrain(cfg, plan: Plan, root: Path, unlabelled: Path, teachers: list) -> None:
    """A student per fine-tune-mode random-init run (its teacher), on the largest subset's images."""
    for teacher in teachers:
        task = teacher.argv[teacher.argv.index("--task") + 1]
        out = root / "runs" / "selftrain" / task / teacher.out.name  # random[-variant]-seedS
        # On an augmentation axis the student trains at its teacher's level (Zoph et al. compare
        # both at each level); otherwise at configs/selftrain/TASK.yaml's (strong) one.
        level = [a.split("=", 1)[1] for a in teacher.argv if a.startswith("train.augment=")]
        argv = ["selftrain", "--task", task, "--teacher", str(teacher.out), "--unlabelled", str(unlabelled),
                *_sets([f"finetune.train.augment={lv}" for lv in level[-1:]]),
                *_sets(cfg.finetune.selftrain_set), "--out", str(out), "--force"]
        # The student's config starts as the teacher's recorded one: same data, steps and
        # cleaned test set. Its output, for the skip check and results collect: the student's run folder.
        plan.add("selftrain", f"{task} selftrain from {teacher.out.name}", argv, out / "student")


# Printed under the pretraining table of the report, for a study on the synthetic world only
# (it explains that world's demo; a study on real data gets no such paragraph).
_WHAT_DRIVES_IT = """\
What drives the trend: as in the paper, every subset pretrains with the same
compute (the same steps and batch), so a small subset is seen many times over
while a large one is seen a few times. Repeated passes let the network fit
its subset's images and their noisy labels ({noise} of the given labels in
this world are wrong) instead of learning features that hold beyond it; more
distinct images give features that transfer. The frozen mode shows it most
directly, because everything before conv5 is the pretrained trunk. Where a
task's metric stays near its floor at this budget (read its fit's interval
in the table above), the demo is too short for that task to tell the
backbones apart; the same commands at real scale remove that limit."""


def _world_paragraph(root: Path) -> list[str]:
    """The synthetic world's explanation, with the label noise the world measured."""
    world = root / "world" / "world.json"
    noise = "some"
    if world.is_file():
        rate = json.loads(world.read_text()).get("pretrain", {}).get("noise_rate_measured")
        noise = f"{rate:.0%}" if isinstance(rate, (int, float)) else noise
    return ["", _WHAT_DRIVES_IT.format(noise=noise)]


# --------------------------------------------------------------------------- report


def print_plan(plan: Plan, cfg, file=None) -> None:
    file = file or sys.stdout
    counts = {}
    for step in plan.steps:
        counts[step.stage] = counts.get(step.stage, 0) + 1
    print(f"study {cfg.name}: {len(plan.steps)} commands -> {plan.root}/", file=file)
    for stage, n in counts.items():
        print(f"  {stage:9s} {n:3d} run(s)", file=file)
    todo = [s for s in plan.steps if not (s.out / s.marker).is_file()]
    if cfg.world is not None:
        from scaling.study.runner import PARALLEL_STAGES, speedup

        estimate = sum(estimate_seconds(s) / (speedup(cfg.jobs) if s.stage in PARALLEL_STAGES else 1)
                       for s in todo)
        at_once = f", {cfg.jobs} runs at a time" if cfg.jobs > 1 else ""
        print(f"  estimated time for the {len(todo)} commands with no finished output{at_once}: "
              f"~{max(1, round(estimate / 60))} min (rough figures measured on 2 CPU cores at demo scale; "
              "a finished output whose config changed runs again and is not counted)", file=file)
    else:
        print(f"  {len(todo)} commands not done yet; their time depends on the data and the cluster", file=file)


def print_summary(plan: Plan, file=None) -> None:
    file = file or sys.stdout
    print("\nstage      status   seconds  output", file=file)
    for step in plan.steps:
        print(f"{step.stage:10s} {step.status:8s} {step.seconds:7.1f}  {step.out}  ({step.label})", file=file)
    results = plan.root / "results"
    print(f"\nreport: {results / 'report.md'}\nfits:   {results / 'fits.csv'}\n"
          f"plots:  {results / 'plots'}/", file=file)


def write_study_section(plan: Plan, cfg) -> Path:
    """Append the study's own section (subsets, dedup effect, timings) to results/report.md."""
    from datascale.atomic import write_text

    report = plan.root / "results" / "report.md"
    text = report.read_text() if report.is_file() else ""
    marker = "\n## The study\n"
    text = text.split(marker)[0].rstrip() + "\n" + marker
    lines = [f"Config `{cfg.name}`; every output under `{plan.root}/`.", "",
             "| run | images | passes over the subset | mAP@100 (annotated classes) | mAP@100 all levels "
             "| converged |", "|---|---|---|---|---|---|"]
    for step in plan.steps:
        if step.stage == "pretrain" and (step.out / "metrics.json").is_file():
            metrics = json.loads((step.out / "metrics.json").read_text())
            meta = json.loads((step.out / "backbone.json").read_text())["lineage"]
            values = metrics["metrics"]["eval"]
            leaves = next(v for k, v in values.items() if not k.endswith("_all_levels"))
            levels = next((v for k, v in values.items() if k.endswith("_all_levels")), float("nan"))
            budget = metrics.get("budget", {})
            passes = budget.get("passes", meta["steps"] * meta["global_batch"] / meta["subset_images"])
            state = budget.get("converged")
            converged = ("yes" if state else f"no (+{budget.get('map_gain') or 0:.3f} to gain)") \
                if state is not None else "not recorded"
            # The run's folder name: the size plus its axis values (7200-top30), unique per row.
            lines.append(f"| {step.out.name} | {meta['subset_images']} | {passes:.0f} | {leaves:.4f} "
                         f"| {levels:.4f} | {converged} |")
    if cfg.world is not None:
        lines += _world_paragraph(plan.root)
    audit = plan.root / "dedup" / "audit"
    summaries = sorted(audit.glob("*/summary.json")) if audit.is_dir() else []
    if summaries:
        lines += ["", "Near-duplicate audit of the downstream test sets against the largest pool:", "",
                  "| test set | images | flagged | threshold |", "|---|---|---|---|"]
        for path in summaries:
            s = json.loads(path.read_text())
            lines.append(f"| {path.parent.name} | {s['test_images']} | {s['images_with_duplicate']} "
                         f"| {s['threshold']:.3f} |")
    at_once = f"; pretraining and fine-tuning {plan.jobs} runs at a time" if plan.jobs > 1 else ""
    lines += ["", f"Time per stage (wall seconds, this run{at_once}; skipped stages were already complete):",
              "", "| stage | seconds |", "|---|---|"]
    totals: dict[str, float] = {}
    for step in plan.steps:
        totals[step.stage] = totals.get(step.stage, 0.0) + step.seconds
    lines += [f"| {stage} | {plan.wall.get(stage, secs):.0f} |" for stage, secs in totals.items()]
    write_text(report, text + "\n".join(lines) + "\n")
    return report
