"""The kstatus rules (kubernetes-sigs/cli-utils ``pkg/kstatus``), which Flux uses for health.

``compute`` asks the real ``status.Compute`` from cli-utils, not a copy of its rules: a small
Go program (``tests/kstatus_tool``) is built once into the cache, as the control-plane
binaries are, and one process of it answers every object of a test session.
``expected_from_lifecycle`` says what the verdict must be from the Pipeline's Feldera status
fields alone, so a tracker can check that the conditions the operator writes tell GitOps
tools the truth.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pipeline_operator.models import program_digest
from pipeline_operator_dev import builds

CURRENT, IN_PROGRESS, FAILED, TERMINATING = "Current", "InProgress", "Failed", "Terminating"
NOT_FOUND, UNKNOWN = "NotFound", "Unknown"
# kstatus's Status strings (cli-utils pkg/kstatus/status/status.go) and our names for them.
VERDICTS = {"Current": CURRENT, "InProgress": IN_PROGRESS, "Failed": FAILED, "Terminating": TERMINATING,
            "NotFound": NOT_FOUND, "Unknown": UNKNOWN}

TOOL_SOURCE = Path(__file__).resolve().parent / "kstatus_tool"
_SOURCE_FILES = ("go.mod", "go.sum", "main.go")


def _progress(message: str) -> None:
    print(f"[kstatus] {message}", file=sys.stderr, flush=True)


def cli_utils_version() -> str:
    """The cli-utils release the tool is pinned to, as go.mod says."""
    found = re.search(r"^\s*(?:require\s+)?sigs\.k8s\.io/cli-utils\s+(v\S+)", (TOOL_SOURCE / "go.mod").read_text(),
                      re.MULTILINE)
    if not found:
        raise RuntimeError(f"{TOOL_SOURCE / 'go.mod'} does not require sigs.k8s.io/cli-utils; "
                           "it must pin the release whose kstatus the tests use")
    return found.group(1)


def _source_digest() -> str:
    digest = hashlib.sha256()
    for name in _SOURCE_FILES:
        digest.update(name.encode() + b"\0" + (TOOL_SOURCE / name).read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _build(dest: Path, version: str, progress: Callable[[str], None]) -> None:
    if shutil.which("go") is None:
        raise RuntimeError(f"building the kstatus tool (cli-utils {version}) needs Go 1.22 or newer on PATH, "
                           f"and found none: install Go, or put a binary built from {TOOL_SOURCE} at "
                           f"{dest / 'kstatus'}")
    progress(f"building the kstatus tool (cli-utils {version}) into {dest}: once, about 1 min on 2 cores")
    with tempfile.TemporaryDirectory(prefix="kstatus-build-") as td:
        work = Path(td)
        for name in _SOURCE_FILES:  # build a copy: the checkout's go.mod and go.sum are never rewritten
            shutil.copy2(TOOL_SOURCE / name, work / name)
        partial = dest / ".kstatus.partial"
        builds._run_with_progress(
            ["go", "build", "-v", "-trimpath", "-ldflags", "-s -w", "-o", str(partial), "."],
            cwd=work, env=builds._go_env(),
            label=f"building the kstatus tool (cli-utils {version})",
            progress=progress)
        partial.replace(dest / "kstatus")


def ensure_tool(progress: Callable[[str], None] = _progress) -> Path:
    """The built tool, from the cache (keyed by its sources) or built now with ``go build``."""
    version = cli_utils_version()
    (binary,) = builds._cached(f"kstatus-{version}-{_source_digest()}", ["kstatus"],
                                     lambda dest: _build(dest, version, progress), progress)
    return binary


class _Tool:
    """One long-running tool process, started on first use, restarted if it died, stopped at exit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: IO[bytes] | None = None
        self._pid = 0  # the Python process that started it: a forked child must not share its pipes
        self._exit_hook = False

    def ask(self, obj: dict[str, Any]) -> dict[str, str]:
        line = json.dumps(obj, separators=(",", ":")) + "\n"  # JSON escapes newlines: one object, one line
        with self._lock:
            for attempt in (1, 2):
                proc = self._running()
                assert proc.stdin is not None and proc.stdout is not None
                try:
                    proc.stdin.write(line)
                    proc.stdin.flush()
                    reply = proc.stdout.readline()
                except OSError:
                    reply = ""
                if reply:
                    return json.loads(reply)
                why = self._reap()
                if attempt == 2:
                    raise RuntimeError(f"the kstatus tool died twice answering one object ({why}); "
                                       f"the object was: {line[:2000]}")
        raise AssertionError("unreachable")

    def _running(self) -> subprocess.Popen[str]:
        if self._proc is not None and self._proc.poll() is None and self._pid == os.getpid():
            return self._proc
        if self._proc is not None and self._pid == os.getpid():
            self._reap()
        binary = ensure_tool()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process; _reap closes it
        self._proc = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._stderr, text=True, encoding="utf-8")
        self._pid = os.getpid()
        if not self._exit_hook:
            atexit.register(self.close)
            self._exit_hook = True
        return self._proc

    def _reap(self) -> str:
        """Forget a dead (or wedged) process; say how it ended."""
        proc, err = self._proc, self._stderr
        self._proc = self._stderr = None
        if proc is None:
            return "not running"
        for pipe in (proc.stdin, proc.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        tail = ""
        if err is not None:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip()[-2000:]
            err.close()
        return f"exit {proc.returncode}" + (f": {tail}" if tail else "")

    def close(self) -> None:
        with self._lock:
            if self._proc is not None and self._pid == os.getpid():
                self._reap()  # closing stdin ends the tool's loop; it exits 0


_tool = _Tool()


def compute(obj: dict[str, Any]) -> tuple[str, str]:
    """The kstatus verdict and its message, from cli-utils' own ``status.Compute``.

    An object kstatus cannot judge (a malformed field) is ``UNKNOWN`` with kstatus's error as
    the message, as the kstatus poller reports it.
    """
    answer = _tool.ask(obj)
    if answer.get("error") == "decode":
        raise ValueError(f"the kstatus tool could not read the object: {answer['message']}")
    status = answer["status"]
    if status not in VERDICTS:
        raise ValueError(f"the kstatus tool answered status {status!r}, expected one of {sorted(VERDICTS)}")
    return VERDICTS[status], answer["message"]


def expected_from_lifecycle(obj: dict[str, Any]) -> str:
    """What the verdict must be, judged from the Pipeline's lifecycle fields only."""
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return TERMINATING
    status = obj.get("status") or {}
    if status.get("observedGeneration") != meta.get("generation"):
        return IN_PROGRESS
    if status.get("deploymentError") or status.get("programStatus") in ("SqlError", "RustError", "SystemError"):
        return FAILED
    spec = obj.get("spec") or {}
    resources = status.get("deploymentResourcesStatus")
    desired = status.get("deploymentResourcesDesiredStatus")
    if resources == "Stopped" and desired == "Stopped" and spec.get("desiredStatus") == "Provisioned" and \
            (status.get("operatorState") or {}).get("systemStopGeneration") is not None:
        return FAILED  # held Stopped by the system until a start: a person must act
    if resources != desired or desired != spec.get("desiredStatus", "Stopped"):
        return IN_PROGRESS
    if status.get("programStatus") != "Success" or status.get("storageStatus") == "Clearing":
        return IN_PROGRESS
    if status.get("programDigest") != program_digest((spec.get("program") or {}).get("sql", "")):
        return IN_PROGRESS  # a program change is held until the pipeline is Stopped
    if resources == "Provisioned" and status.get("deploymentRuntimeStatus") not in (
            "Running", "Paused", "Standby", "AwaitingApproval"):
        return IN_PROGRESS
    wanted = spec.get("runtimeDesiredStatus")
    observed = status.get("deploymentRuntimeDesiredStatus")
    if resources == "Provisioned" and wanted and observed in ("Running", "Paused") and observed != wanted:
        return IN_PROGRESS
    return CURRENT


@dataclass
class KStatusTracker:
    """Collects the Pipelines a test touched; at teardown each must be judged correctly."""
    get: Callable[[str, str, str], dict[str, Any]]
    tracked: dict[tuple[str, str], str | None] = field(default_factory=dict)

    def track(self, namespace: str, name: str, expect: str | None = None) -> None:
        self.tracked[(namespace, name)] = expect

    def verify(self) -> None:
        problems = []
        for (namespace, name), expect in self.tracked.items():
            obj = self.get("pipeline", name, namespace)
            verdict, message = compute(obj)
            truth = expected_from_lifecycle(obj)
            if verdict != truth:
                problems.append(f"{namespace}/{name}: kstatus says {verdict} ({message}), "
                                f"the lifecycle fields say {truth}")
            if expect is not None and verdict != expect:
                problems.append(f"{namespace}/{name}: kstatus says {verdict} ({message}), expected {expect}")
            from .argocd_health import EXPECTED, health
            argo, argo_message = health(obj)
            if argo not in EXPECTED.get(verdict, set()):
                problems.append(f"{namespace}/{name}: Argo CD health {argo} ({argo_message}) "
                                f"disagrees with kstatus {verdict}")
        assert not problems, "\n".join(problems)
