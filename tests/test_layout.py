"""The package boundaries the layout promises: model/ is PyTorch + transformers only, and Ray stays in
the job drivers, so every transform and module below them is importable and testable without a cluster."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_ALLOWED = {"model", "torch", "transformers", "yaml"}
RAY_DRIVERS = {"pipelines/preprocess.py", "pipelines/training/run.py", "pipelines/training/loop.py",
               "pipelines/scoring/run.py"}


def _top_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_model_imports_only_torch_transformers_and_the_standard_library():
    for path in sorted((ROOT / "model").rglob("*.py")):
        foreign = _top_level_imports(path) - MODEL_ALLOWED - set(sys.stdlib_module_names)
        assert not foreign, f"{path.relative_to(ROOT)} imports {sorted(foreign)}"


def test_ray_is_imported_only_by_the_job_drivers():
    for path in sorted((ROOT / "pipelines").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel not in RAY_DRIVERS:
            assert "ray" not in _top_level_imports(path), f"{rel} imports ray; only {sorted(RAY_DRIVERS)} may"
