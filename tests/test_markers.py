"""`pytest -m "not apiserver"` is the fast unit run: it neither starts a control plane nor needs its
binaries. Every test whose fixtures reach the control plane (``cluster``, ``crd_installed``,
``binaries``, directly or through another fixture such as ``operators`` or ``kstatus``) must
carry the ``apiserver`` marker. This collects the unit run in a fresh pytest, as a user runs it,
and checks each selected item's fixture closure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONTROL_PLANE_FIXTURES = {"cluster", "crd_installed", "binaries"}

# Records every collected item (before ``-m`` deselects any) and the items selected, each with its
# fixture closure (``fixturenames``: every fixture it uses, directly or through other fixtures).
PLUGIN = textwrap.dedent("""
    import json
    import os

    import pytest

    _all = []


    def _row(item):
        return {"nodeid": item.nodeid, "fixtures": sorted(getattr(item, "fixturenames", ())),
                "markers": sorted({m.name for m in item.iter_markers()})}


    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(items):
        _all.extend(_row(item) for item in items)


    def pytest_collection_finish(session):
        with open(os.environ["MARKER_CHECK_OUT"], "w") as out:
            json.dump({"all": _all, "selected": [_row(item) for item in session.items]}, out)
""")


@pytest.fixture(scope="module")
def unit_run(tmp_path_factory) -> dict[str, list[dict]]:
    """``pytest tests -m "not apiserver" --collect-only``, in a subprocess."""
    folder = tmp_path_factory.mktemp("marker-check")
    (folder / "marker_check_plugin.py").write_text(PLUGIN)
    out = folder / "items.json"
    env = {**os.environ, "MARKER_CHECK_OUT": str(out),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, "-m", "pytest", "tests", "-m", "not apiserver", "--collect-only", "-q",
                          "-p", "no:cacheprovider", "-p", "marker_check_plugin"],
                         check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(out.read_text())


def test_the_unit_run_reaches_no_control_plane_fixture(unit_run):
    selected = unit_run["selected"]
    assert len(selected) > 100, [i["nodeid"] for i in selected]  # the unit tests were collected at all
    assert all("apiserver" not in i["markers"] for i in selected)
    offenders = {i["nodeid"]: sorted(CONTROL_PLANE_FIXTURES & set(i["fixtures"])) for i in selected
                 if CONTROL_PLANE_FIXTURES & set(i["fixtures"])}
    assert not offenders, ("these tests reach the control plane but lack @pytest.mark.apiserver "
                           f"(or pytestmark = pytest.mark.apiserver): {json.dumps(offenders, indent=1)}")


def test_the_check_sees_fixtures_through_other_fixtures(unit_run):
    """The closure the check reads includes fixtures reached through other fixtures
    (``operators`` -> ``crd_installed`` -> ``cluster`` -> ``binaries``), and such tests are deselected."""
    everything = {i["nodeid"]: i for i in unit_run["all"]}
    full = everything["tests/test_operator_lifecycle.py::test_full_lifecycle_with_real_processes"]
    assert CONTROL_PLANE_FIXTURES <= set(full["fixtures"]) and "apiserver" in full["markers"]
    selected = {i["nodeid"] for i in unit_run["selected"]}
    assert full["nodeid"] not in selected
    assert selected == {n for n, i in everything.items() if "apiserver" not in i["markers"]}
