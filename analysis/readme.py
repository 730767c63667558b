"""Regenerate the README's demo section from a real study's report.md (never typed by hand).

    python -m analysis.readme study/results/report.md README.md     (or: make readme)

Copies the report's headline table, what the study does not show, the
pretraining budget and the study's own section (subsets, dedup audit,
timings) between the README's markers, with links rewritten to point at the
report's folder, and names the report and when it was made.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from datascale.atomic import write_text
from datascale.errors import DataError

BEGIN, END = "<!-- demo-results:begin -->", "<!-- demo-results:end -->"
SECTIONS = ("Headline", "What this study does not show", "Pretraining budget", "The study")


def sections(report: str) -> dict[str, str]:
    """The report's ``## `` sections by title (text below the heading, up to the next one)."""
    parts = re.split(r"^## (.+)$", report, flags=re.M)
    return {title.strip(): body.strip() for title, body in zip(parts[1::2], parts[2::2])}


def demo_section(report_path: Path, readme_path: Path) -> str:
    """The README block: the chosen report sections, one heading level down, links made relative
    to the README."""
    text = report_path.read_text(encoding="utf-8")
    found = sections(text)
    missing = [s for s in SECTIONS[:2] if s not in found]
    if missing:
        raise DataError(f"{report_path} has no section(s) {', '.join(missing)}; is it a report written by "
                        "`datascale plot` (or `datascale study`)?")
    generated = re.search(r"^Generated (.+?) from", text, flags=re.M)
    base = Path(os.path.relpath(report_path.parent.resolve(), readme_path.parent.resolve()))
    lines = [f"Measured by `make study` ({generated.group(1) if generated else 'date unknown'}), copied from "
             f"[`{base.as_posix()}/report.md`]({base.as_posix()}/report.md) by `make readme`.", ""]
    for title in SECTIONS:
        if title in found:
            body = re.sub(r"\]\((?!https?:|/)([^)]+)\)", lambda m: f"]({(base / m.group(1)).as_posix()})",
                          found[title])
            lines += [f"#### {title}", "", body, ""]
    return "\n".join(lines).rstrip() + "\n"


def update_readme(report_path: str | Path, readme_path: str | Path) -> Path:
    """Replace the text between the README's demo markers; DataError when they are missing."""
    report_path, readme_path = Path(report_path), Path(readme_path)
    if not report_path.is_file():
        raise DataError(f"{report_path} not found: run `make study` first")
    readme = readme_path.read_text(encoding="utf-8")
    if BEGIN not in readme or END not in readme:
        raise DataError(f"{readme_path} lacks the markers {BEGIN} ... {END} around its demo section")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    write_text(readme_path, f"{head}{BEGIN}\n{demo_section(report_path, readme_path)}{END}{tail}")
    return readme_path


if __name__ == "__main__":  # pragma: no cover - exercised through `make readme` and the test
    if len(sys.argv) != 3:
        sys.exit("usage: python -m analysis.readme REPORT.md README.md")
    try:
        print(f"updated {update_readme(sys.argv[1], sys.argv[2])}")
    except DataError as exc:
        sys.exit(f"error: {exc}")
