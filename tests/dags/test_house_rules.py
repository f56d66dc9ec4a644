"""Folders are roles: the product never imports what only the embedded stack and the demo need."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "include" / "mlpipeline"
LOCAL = "mlpipeline.local"
#: May import ``mlpipeline.local``: the CLI entry points, and the demo-only DAG that drives the
#: traffic simulator (its doc says so).
ALLOWED = {
    PACKAGE / "__main__.py",
    PACKAGE / "serving" / "__main__.py",
    ROOT / "dags" / "traffic_replay.py",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; relative ones resolved), at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _module_name(path).split(".")[: -node.level]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _product_files() -> list[Path]:
    files = [
        *PACKAGE.rglob("*.py"),
        *(ROOT / "dags").glob("*.py"),
        *(ROOT / "plugins").rglob("*.py"),
    ]
    local = PACKAGE / "local"
    return sorted(p for p in files if local not in p.parents and p not in ALLOWED)


@pytest.mark.parametrize("path", _product_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_product_does_not_import_local(path: Path):
    offending = sorted(n for n in _imports(path) if n == LOCAL or n.startswith(f"{LOCAL}."))
    assert not offending, (
        f"{path.relative_to(ROOT)} imports {offending}: the product must not depend on {LOCAL}"
    )


def test_the_rule_sees_an_offender(tmp_path: Path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from mlpipeline.local import stack\n")
    assert "mlpipeline.local" in _imports(probe)


@pytest.mark.parametrize("name", ["build_dataset.py", "parquet_footer.py"])
def test_spark_job_imports_only_stdlib_pyspark_and_its_sibling(name: str):
    """spark-submit ships the job and parquet_footer.py alone: no mlpipeline, no airflow."""
    import sys

    path = PACKAGE / "spark_jobs" / name
    allowed = set(sys.stdlib_module_names) | {"pyspark", "parquet_footer", "__future__", ""}
    sibling = {"mlpipeline.spark_jobs", "mlpipeline.spark_jobs.parquet_footer"}  # ``from . import``
    tops = {n.split(".")[0] for n in _imports(path) - sibling}
    assert tops <= allowed, f"{name} imports {sorted(tops - allowed)}"
