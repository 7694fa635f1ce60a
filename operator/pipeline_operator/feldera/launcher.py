"""The pipeline pod's launcher (``pipeline-operator launch-pipeline``): how a Feldera pipeline binary reaches
its pod on the Kubernetes backend.

Feldera's runner downloads a pipeline's binary from the compiler server's artifact URL into the pipeline's
working directory and runs it there. Here the pod runs the operator's own image, whose launcher downloads the
program's binary from the operator (``GET <operator>/pipeline-binaries/<namespace>/<name>``), authenticated with
the pipeline's own control token (``$PIPELINE_CONTROL_TOKEN``, from the Secret of this start), streams it to
``program_<sha256 prefix>`` in the working directory while computing its sha256, compares it with the digest
the operator put in the pod's command, and only then execs it with Feldera's arguments (the token left out of its
environment). It writes nothing else: the ``PipelineConfig`` is the ConfigMap's, mounted. A binary whose digest
differs (changed in the binary store since it was compiled, or altered on its way) is removed and the launcher
exits with a message saying so; it never runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NoReturn

from .launch import file_sha256

TOKEN_ENV = "PIPELINE_CONTROL_TOKEN"
BINARY_ROUTE = "/pipeline-binaries/{namespace}/{name}"  # served by the operator's HTTP API
CHUNK = 1 << 20
ATTEMPTS = 6  # tries of a download the operator did not answer (1, 2, 4, 8, 16 s apart)
TIMEOUT = 60.0  # seconds without a byte before a download is given up


class LaunchError(Exception):
    """Why the launcher does not run the program (its message is the container's last log line)."""


def binary_name(sha256: str) -> str:
    return f"program_{sha256[:16]}"


def _refusal(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read(64 * 1024) or b"{}")
        message = str(body.get("message") or "") if isinstance(body, dict) else ""
        code = str(body.get("error_code") or "") if isinstance(body, dict) else ""
    except ValueError:
        message, code = "", ""
    return f"{exc.code} {code or exc.reason}" + (f": {message}" if message else "")


def download(url: str, token: str, sha256: str, target: Path, attempts: int = ATTEMPTS) -> None:
    """Stream the binary at ``url`` into ``target`` (through a temporary file beside it), checking its sha256;
    the operator's refusals (4xx) are final, its silence is tried again."""
    tmp = target.with_name(f".{target.name}.part")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    for attempt in range(attempts):
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response, open(tmp, "wb") as out:
                while chunk := response.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            break
        except urllib.error.HTTPError as exc:
            tmp.unlink(missing_ok=True)
            if exc.code < 500 or attempt == attempts - 1:
                raise LaunchError(f"the operator refused the program binary at {url}: {_refusal(exc)}") from None
        except (OSError, urllib.error.URLError) as exc:
            tmp.unlink(missing_ok=True)
            if attempt == attempts - 1:
                raise LaunchError(f"the program binary could not be downloaded from {url}: {exc}") from None
        print(f"launcher: the operator did not serve the program binary (try {attempt + 1} of {attempts}); "
              "trying again", file=sys.stderr, flush=True)
        time.sleep(2 ** attempt)
    if digest.hexdigest() != sha256:
        tmp.unlink(missing_ok=True)
        raise LaunchError(f"the program binary downloaded from {url} has sha256 {digest.hexdigest()}, not "
                          f"{sha256} as compiled: it changed in the operator's binary store since the program was "
                          "compiled (or on its way); not run. Put the program's binary back, or compile the program "
                          "again and start the pipeline anew.")
    tmp.chmod(0o700)
    tmp.replace(target)


def fetch(url: str, sha256: str, workdir: Path) -> Path:
    """The verified binary in ``workdir``: downloaded, or the one a previous run of this container left there
    (a container restart keeps the pod's working directory) if its digest is still right."""
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        raise LaunchError(f"${TOKEN_ENV} is not set: the pipeline's control token is needed to download its binary")
    target = workdir / binary_name(sha256)
    if target.is_file() and file_sha256(target) == sha256:
        return target
    target.unlink(missing_ok=True)
    download(url, token, sha256, target)
    return target


def launch(url: str, sha256: str, args: list[str], workdir: Path | None = None) -> NoReturn:
    """Fetch the binary, then become it: ``<binary> <args>`` in the working directory, without the token."""
    workdir = workdir or Path.cwd()
    try:
        binary = fetch(url, sha256, workdir)
    except LaunchError as exc:
        print(f"launcher: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    print(f"launcher: running {binary.name} (sha256 {sha256})", file=sys.stderr, flush=True)
    os.execve(binary, [str(binary), *args], env)
