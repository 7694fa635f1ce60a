"""``promtool``, Prometheus's rule checker, built from the Prometheus Go module and cached.

The alerting rules shipped in ``deploy/monitoring/`` are only worth something if Prometheus
accepts them; ``promtool check rules`` and ``promtool test rules`` are how Prometheus itself
says so. The binary is built once from the Go module proxy (pinned below) into the same cache
as the control plane's binaries (:func:`builds.cache_root`), so CI and repeated test runs
reuse it. ``$PROMTOOL`` points at a prebuilt binary instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .builds import Progress, _cached, _go_env, _run_with_progress, _stderr_progress

# The Go module of Prometheus 3.x is tagged v0.3MM.P for release 3.MM.P.
PROMETHEUS_MODULE_VERSION = "0.316.0"


def go_available() -> bool:
    """Whether a Go toolchain is on the PATH (a build needs one; a cached binary does not)."""
    return shutil.which("go") is not None


def cached_path(version: str = PROMETHEUS_MODULE_VERSION) -> Path:
    """Where the built ``promtool`` lives (whether or not it has been built yet)."""
    from .builds import cache_root
    return cache_root() / "bin" / f"promtool-v{version}" / "promtool"


def build_promtool(dest: Path, version: str = PROMETHEUS_MODULE_VERSION,
                   progress: Progress = _stderr_progress) -> Path:
    """``go install`` promtool at ``version`` with ``GOBIN`` set to ``dest``.

    The install happens under a temporary ``GOBIN`` and the binary is moved in afterwards, so an
    interrupted build never leaves a half-written ``promtool`` in the cache.
    """
    env = _go_env()
    out = dest / "promtool"
    with tempfile.TemporaryDirectory(prefix="promtool-build-", dir=dest) as td:
        env["GOBIN"] = td
        progress(f"promtool v{version}: downloading modules and building")
        _run_with_progress(
            # remove_all_sd leaves out the service-discovery plugins (cloud SDKs): checking and testing
            # rules needs none of them, and they are most of the build.
            ["go", "install", "-v", "-trimpath", "-tags", "remove_all_sd", "-ldflags", "-s -w",
             f"github.com/prometheus/prometheus/cmd/promtool@v{version}"],
            cwd=Path(td), env=env, label=f"building promtool v{version} (a few minutes on 2 cores)",
            progress=progress)
        Path(td, "promtool").replace(out)
    return out


def ensure_promtool(progress: Progress = _stderr_progress) -> Path:
    """``$PROMTOOL`` if set, else the cached build, building it first when missing."""
    if explicit := os.environ.get("PROMTOOL"):
        return Path(explicit)
    (path,) = _cached(f"promtool-v{PROMETHEUS_MODULE_VERSION}", ["promtool"],
                      lambda d: build_promtool(d, progress=progress), progress)
    return path


if __name__ == "__main__":
    print(ensure_promtool())
