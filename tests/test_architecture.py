"""Layering stated as import-linter contracts (.importlinter in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept():
    """The pure core imports no edges; the operator imports no development tooling; and any later contract."""
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    res = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(contracts)} kept, 0 broken" in res.stdout


def test_no_module_named_operator_shadows_the_standard_library():
    src = REPO / "operator"
    assert not (src / "operator.py").exists() and not (src / "operator" / "__init__.py").exists()
    assert not (src / "__init__.py").exists()
    import operator
    assert hasattr(operator, "itemgetter")  # still the standard library's


def test_readme_configuration_table_is_generated_from_the_settings():
    from pipeline_operator.settings import settings_table
    readme = (REPO / "README.md").read_text()
    start = readme.index("<!-- settings-table -->\n") + len("<!-- settings-table -->\n")
    end = readme.index("<!-- /settings-table -->")
    assert readme[start:end].strip() == settings_table(), \
        "README's configuration table is stale: paste `pipeline-operator settings --markdown` into it"
