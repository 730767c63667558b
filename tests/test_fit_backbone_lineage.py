"""The backbone of each run reaches the fits: pretrain_run from lineage, or from the weights it loaded."""

from __future__ import annotations

from analysis.config import FitConfig
from analysis.fit import fit_table
from analysis.results import collect_runs, to_frame
from test_results_run_folders import make_run

SIZES = (10_000_000, 30_000_000, 100_000_000, 300_000_000)


def _lineage(size, seed, **extra):
    return {"task": "detection", "mode": "finetune", "seed": seed, "arch": "resnet50", "init": "checkpoint",
            "pretrain_run": None, "subset_name": f"{size // 10**6}M", "subset_images": size, "steps": 100,
            **extra}


def test_pretrain_run_falls_back_to_the_backbone_hash_then_its_path(tmp_path):
    make_run(tmp_path, "hashed", metrics={"original": {"AP": 0.3}},
             lineage=_lineage(10**7, 0, backbone="/w/a.pt", backbone_sha256="ab12"))
    make_run(tmp_path, "path-only", metrics={"original": {"AP": 0.3}}, lineage=_lineage(10**7, 1, backbone="/w/b.pt"))
    make_run(tmp_path, "named", metrics={"original": {"AP": 0.3}},
             lineage={**_lineage(10**7, 2, backbone="/w/c.pt"), "pretrain_run": "runs/pretrain/10M-r0"})
    make_run(tmp_path, "scratch", metrics={"original": {"AP": 0.1}},
             lineage={**_lineage(10**7, 3), "init": "random", "subset_images": None})
    pretrain = make_run(tmp_path, "pretrain-10M", metrics={"eval": {"mAP@100": 0.2}}, stage="pretrain",
                        lineage={**_lineage(10**7, 0), "mode": "pretrain", "init": "random"})
    rows = {r["run_dir"].rsplit("/", 1)[-1]: r["pretrain_run"] for r in collect_runs([tmp_path], progress=False).rows}
    assert rows == {"hashed": "sha256:ab12", "path-only": "/w/b.pt", "named": "runs/pretrain/10M-r0", "scratch": None,
                    "pretrain-10M": str(pretrain.resolve())}


def test_runs_fine_tuned_from_one_backbone_are_one_point_of_the_fit(tmp_path):
    for size in SIZES:
        for replicate in range(2):
            for seed in range(3):
                make_run(tmp_path, f"ft-{size}-r{replicate}-s{seed}",
                         metrics={"original": {"AP": 0.2 + 0.03 * (len(str(size)) - 8) + 0.01 * replicate
                                               + 0.001 * seed}},
                         lineage=_lineage(size, seed, backbone=f"/w/{size}-{replicate}.pt",
                                          backbone_sha256=f"{size}{replicate}"))
    table = to_frame(collect_runs([tmp_path], progress=False).rows)
    output = fit_table(table, FitConfig(bootstrap=50), progress=False)
    row = output.fits.iloc[0]
    assert (row["n_runs"], row["n_backbones"], row["min_backbones_per_size"]) == (24, 8, 2)
    assert row["interval_dof"] == 6 and row["pure_error_dof"] == 4
    assert set(output.points["pretrain_run"]) == {f"sha256:{s}{r}" for s in SIZES for r in range(2)}
    assert len(output.points) == 24
