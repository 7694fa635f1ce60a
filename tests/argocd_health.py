"""Runs deploy/gitops/argocd/health.lua the way Argo CD does: a global ``obj``, a returned table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lupa import LuaRuntime

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "gitops" / "argocd" / "health.lua"


def _to_lua(lua: LuaRuntime, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


def health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = _to_lua(lua, obj)
    result = lua.execute(SCRIPT.read_text())
    return result["status"], result["message"]


# What Argo CD should say for each kstatus verdict.
EXPECTED = {"Current": {"Healthy", "Suspended"}, "InProgress": {"Progressing"}, "Failed": {"Degraded"},
            "Terminating": {"Progressing"}}
