"""``fda``, Feldera's command-line client, built from crates.io and cached.

The operator's API is meant to serve Feldera's own clients unchanged; ``fda`` of the Feldera version the
API matches is one of them (tests/test_fda.py runs it against the operator). It is built once with
``cargo install fda --version V --locked`` (the crate's own lock file) into the same cache as the control
plane's binaries (:func:`builds.cache_root`), so CI and repeated test runs reuse it; the build prints
how far it got and how long it took. ``$FDA`` points at a prebuilt binary instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .builds import Progress, _cached, _run_with_progress, _stderr_progress, cache_root

# The fda of the Feldera version the API matches (docs/api.md, "Feldera version").
FDA_VERSION = "0.306.0"


def cargo_available() -> bool:
    """Whether a Rust toolchain is on the PATH (a build needs one; a cached binary does not)."""
    return shutil.which("cargo") is not None


def cached_path(version: str = FDA_VERSION) -> Path:
    """Where the built ``fda`` lives (whether or not it has been built yet)."""
    return cache_root() / "bin" / f"fda-{version}" / "fda"


def build_fda(dest: Path, version: str = FDA_VERSION, progress: Progress = _stderr_progress) -> Path:
    """``cargo install fda --version V --locked`` into a temporary root, then the binary moved into ``dest``:
    an interrupted build never leaves a half-written ``fda`` in the cache."""
    if not cargo_available():
        raise RuntimeError("building fda needs a Rust toolchain (cargo) on the PATH; or set $FDA to an fda "
                           f"{version} binary")
    out = dest / "fda"
    env = dict(os.environ)
    env.setdefault("CARGO_BUILD_JOBS", str(os.cpu_count() or 2))
    with tempfile.TemporaryDirectory(prefix="fda-build-", dir=dest) as td:
        env["CARGO_TARGET_DIR"] = str(Path(td, "target"))
        progress(f"fda {version}: downloading crates and building (cargo install --locked)")
        _run_with_progress(
            ["cargo", "install", "fda", "--version", version, "--locked", "--root", str(Path(td, "root"))],
            cwd=Path(td), env=env, label=f"building fda {version} (10 to 20 minutes on 2 cores)", progress=progress,
            counting="Compiling ", unit="crates")
        Path(td, "root", "bin", "fda").replace(out)
    return out


def ensure_fda(progress: Progress = _stderr_progress) -> Path:
    """``$FDA`` if set, else the cached build, building it first when missing."""
    if explicit := os.environ.get("FDA"):
        return Path(explicit)
    (path,) = _cached(f"fda-{FDA_VERSION}", ["fda"], lambda d: build_fda(d, progress=progress), progress)
    return path


if __name__ == "__main__":
    print(ensure_fda())
