"""The import graph flows one way: datascale/ <- data_tools/ <- scaling/; analysis/ reads files only.

Every module's imports (top-level and inside functions) are parsed, so an
arrow the wrong way fails here instead of hiding behind a function-level
import. Names of later layers given as strings (the command list, the
backbone embedder's registry entry) are not imports and are allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# package -> the project packages it may import
ALLOWED = {
    "datascale": {"datascale"},
    "data_tools": {"datascale", "data_tools"},
    "scaling": {"datascale", "data_tools", "scaling"},
    "analysis": {"datascale", "analysis"},
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_flow_one_way(package):
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in ALLOWED and top not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "imports against the layer direction:\n" + "\n".join(wrong)


def test_every_stage_has_a_thin_cli_module_and_the_framework_lists_them():
    from datascale.cli import COMMAND_MODULES

    for module in COMMAND_MODULES:
        assert (ROOT / Path(*module.split("."))).with_suffix(".py").is_file(), module
    for stage in ("data_tools/synth", "data_tools/shards", "data_tools/subsets", "data_tools/dedup",
                  "scaling/pretrain", "scaling/finetune", "scaling/study"):
        assert (ROOT / stage / "cli.py").is_file(), stage


def test_modules_and_functions_stay_readable():
    """Modules <= 450 lines, functions <= 80 lines (STYLE.md aims lower)."""
    long = []
    for package in ALLOWED:
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            if text.count("\n") > 450:
                long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > 80:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines")
    assert not long, "\n".join(long)
