"""Regenerate the README's demo section from a real study's report.md (never typed by hand).

    python -m analysis.readme study/results/report.md README.md     (or: make readme)
    python -m analysis.readme study-findings/results/report.md README.md findings

The optional third argument names the block: ``<!-- NAME-results:begin -->``
(``demo`` by default) and the command named in its first line.

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

SECTIONS = ("Headline", "What this study does not show", "Pretraining budget", "The study")
# The command that made each block's study, named in its first line.
MADE_BY = {"demo": "make study", "findings": "datascale study studies/findings"}


def markers(block: str) -> tuple[str, str]:
    """The begin and end markers of README block ``block``."""
    return f"<!-- {block}-results:begin -->", f"<!-- {block}-results:end -->"


BEGIN, END = markers("demo")


def sections(report: str) -> dict[str, str]:
    """The report's ``## `` sections by title (text below the heading, up to the next one)."""
    parts = re.split(r"^## (.+)$", report, flags=re.M)
    return {title.strip(): body.strip() for title, body in zip(parts[1::2], parts[2::2])}


def demo_section(report_path: Path, readme_path: Path, block: str = "demo") -> str:
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
    made_by = MADE_BY.get(block, f"datascale study ({block})")
    lines = [f"Measured by `{made_by}` ({generated.group(1) if generated else 'date unknown'}), copied from "
             f"[`{base.as_posix()}/report.md`]({base.as_posix()}/report.md) by `make readme`.", ""]
    for title in SECTIONS:
        if title in found:
            body = re.sub(r"\]\((?!https?:|/)([^)]+)\)", lambda m: f"]({(base / m.group(1)).as_posix()})",
                          found[title])
            lines += [f"#### {title}", "", body, ""]
    return "\n".join(lines).rstrip() + "\n"


def update_readme(report_path: str | Path, readme_path: str | Path, block: str = "demo") -> Path:
    """Replace the text between the README's markers of ``block``; DataError when they are missing."""
    report_path, readme_path = Path(report_path), Path(readme_path)
    begin, end = markers(block)
    if not report_path.is_file():
        raise DataError(f"{report_path} not found: run `{MADE_BY.get(block, 'datascale study')}` first")
    readme = readme_path.read_text(encoding="utf-8")
    if begin not in readme or end not in readme:
        raise DataError(f"{readme_path} lacks the markers {begin} ... {end} around its {block} section")
    head, rest = readme.split(begin, 1)
    _, tail = rest.split(end, 1)
    write_text(readme_path, f"{head}{begin}\n{demo_section(report_path, readme_path, block)}{end}{tail}")
    return readme_path


if __name__ == "__main__":  # pragma: no cover - exercised through `make readme` and the test
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python -m analysis.readme REPORT.md README.md [BLOCK]")
    try:
        print(f"updated {update_readme(*sys.argv[1:])}")
    except DataError as exc:
        sys.exit(f"error: {exc}")
