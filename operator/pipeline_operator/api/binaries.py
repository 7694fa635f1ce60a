"""``GET /pipeline-binaries/{namespace}/{name}``: a pipeline's program binary, for its own pod's launcher
(feldera/launcher.py) on the Kubernetes backend with ``--compiler feldera``.

Not a Feldera route, and not for users: the only credential it takes is the pipeline's control token of its
current start (``Authorization: Bearer``, the token of the Secret its pod reads), compared in constant time
with the one the operator knows for that pipeline, whatever ``--api-auth`` says. Without a token: 401; with any
other token (another pipeline's, of this namespace or another, a stopped start's), or for a pipeline that does
not exist: 403, the same answer, so that the route tells nothing of which pipelines exist. What is served is
the binary of the program that pipeline was started with (the compiled artifact of its program after an
operator restart), streamed from the binary store (``FileResponse``: sendfile, never read into memory).
The launcher checks its sha256; the operator does not read the ~300 MB file to check it first.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..feldera.launcher import BINARY_ROUTE
from .errors import ApiError

if TYPE_CHECKING:
    from .auth import Gate
    from .deps import ApiDeps

log = logging.getLogger(__name__)
MAX_TOKEN_BYTES = 4096  # a control token is 43 characters


class Binaries:
    """The program binaries' route of one :class:`~.server.ApiServer`."""

    def __init__(self, gate: Gate, deps: ApiDeps) -> None:
        self.gate = gate
        self.deps = deps

    def routes(self, r: web.UrlDispatcher) -> None:
        r.add_get(BINARY_ROUTE, self.get)
        self.gate.unpooled_routes.add(BINARY_ROUTE)  # a download is long; it takes no user's request slot

    async def get(self, request: web.Request) -> web.StreamResponse:
        deps = self.deps
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        if deps.program_binary is None:
            raise ApiError(404, "NotFound", "This operator serves no pipeline binaries (Kubernetes backend with "
                                            "--compiler feldera only)")
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or len(header) > MAX_TOKEN_BYTES or not header[7:].strip():
            raise ApiError(401, "Unauthorized", "A pipeline's program binary is served to its own pod only: "
                                                "Authorization: Bearer <the pipeline's control token> is required")
        served = deps.pipelines.get(namespace, name) if len(namespace) <= 63 and len(name) <= 253 else None
        granted, binary = (False, None) if served is None else await deps.program_binary(served.key,
                                                                                          header[7:].strip())
        if not granted or served is None:
            log.warning("HTTP API: the program binary of %s/%s refused to %s: not that pipeline's control token",
                        namespace[:63], name[:253], request.remote)
            raise ApiError(403, "Forbidden", f"This token does not grant the program binary of pipeline "
                                             f"{namespace[:63]}/{name[:253]}")
        if binary is None:  # provisioned before this operator started: the artifact of its program
            state = served.state
            digest = state.program_digest if state is not None else None
            artifact: dict[str, Any] | None = await asyncio.to_thread(deps.artifact, digest) if digest else None
            found = (artifact or {}).get("binary")
            binary = found if isinstance(found, dict) else None
        if binary is None or not binary.get("path"):
            raise ApiError(404, "PipelineBinaryNotFound", f"Pipeline {namespace}/{name} runs no program binary")
        path = Path(str(binary["path"]))
        if not await asyncio.to_thread(path.is_file):
            raise ApiError(404, "PipelineBinaryNotFound", f"The program binary of pipeline {namespace}/{name} is "
                                                          "no longer in the operator's binary store")
        log.info("HTTP API: serving the program binary of %s/%s to %s", namespace, name, request.remote)
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream",
                                               "Cache-Control": "no-store"})
