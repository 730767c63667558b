"""notebooks/scaling_curves.ipynb runs headless, on the venv's interpreter, against a small results table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from datascale.cli import main
from test_results_run_folders import make_study

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "scaling_curves.ipynb"


@pytest.mark.slow
def test_notebook_fits_and_plots_a_small_study(tmp_path, monkeypatch):
    import ipykernel  # noqa: F401  (the kernel below is this interpreter's ipykernel)
    import nbformat
    from nbclient import NotebookClient

    make_study(tmp_path / "runs", sizes=(10_000_000, 30_000_000, 100_000_000), seeds=(0, 1))
    table = tmp_path / "results" / "results.parquet"
    assert main(["-q", "results", "collect", str(tmp_path / "runs"), "--out", str(table)]) == 0
    monkeypatch.setenv("DATASCALE_RESULTS", str(table))
    monkeypatch.setenv("DATASCALE_NOTEBOOK_OUT", str(tmp_path / "nb"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # shipped clean
    # jupyter_client starts kernel "python3" with sys.executable: the venv's interpreter.
    NotebookClient(notebook, kernel_name="python3", timeout=180,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    text = "".join(out.get("text", "") for out in outputs if out.get("output_type") == "stream")
    assert f"python: {sys.executable}" in text
    assert "What this study does not show" in text
    # It opens on the headline: the first output is the headline table, with the verdicts.
    first_table = next(out for out in outputs if "text/html" in out.get("data", {}))["data"]["text/html"]
    assert "verdict" in first_table and "grows" in first_table and "slope per 10x" in first_table
    assert sum("image/png" in out.get("data", {}) for out in outputs) == 3  # headline + original + cleaned
    assert sorted(p.name for p in (tmp_path / "nb" / "plots").iterdir()) == [
        "headline.png", "scaling_cleaned-resnet50-pretrained.png", "scaling_original-resnet50-pretrained.png"]
