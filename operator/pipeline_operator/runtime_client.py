"""Talking to a pipeline process over Feldera's runtime HTTP contract.

Whatever a pipeline answers is bounded before it is used: a body is read up to
:data:`MAX_STATUS_BODY` bytes, a JSON body nested deeper than :data:`MAX_JSON_DEPTH` levels is an
invalid answer (never a RecursionError), redirects are never followed (they could carry the
control token, or the operator's requests, to another address), and every string of an
observation is capped by :func:`~pipeline_operator.core.lifecycle.parse_status_response`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import aiohttp

from .core.lifecycle import NOT_JSON, RuntimeObservation, parse_status_response
from .models import SpecRuntimeDesiredStatus

log = logging.getLogger(__name__)

MAX_STATUS_BODY = 1024 * 1024  # a larger /status answer is not read
MAX_JSON_DEPTH = 64  # levels of nesting of a pipeline's JSON answer (Feldera's status has fewer than 10)
_PARSE_IN_THREAD = 64 * 1024  # bytes of a body from which decoding leaves the event loop

# JSON strings (with their escapes), removed before brackets are counted: a bracket inside a string nests nothing.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_INNERMOST = re.compile(rb"\[\]|\{\}")  # one level per pass (two plain replaces could take "{[]}" at once)


class TooDeep(ValueError):
    """A JSON document nested deeper than allowed."""


def _too_deep(raw: bytes, limit: int) -> bool:
    """Whether the brackets of a JSON document (already known to be valid) nest deeper than ``limit``.

    Without a Python loop per byte: strings are removed, then everything but brackets, then the
    innermost pairs one level at a time; whatever is left after ``limit`` levels is deeper."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    for _ in range(limit):
        if not brackets:
            return False
        shorter = _INNERMOST.sub(b"", brackets)
        if len(shorter) == len(brackets):
            return False  # not balanced: cannot happen for valid JSON
        brackets = shorter
    return bool(brackets)


def decode_json(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``raw`` decoded as JSON, nested at most ``max_depth`` levels.

    Raises ValueError when it is not JSON, :class:`TooDeep` when it nests deeper (CPython's decoder
    gives up with a RecursionError past about a thousand levels; fewer still break serialising it)."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise TooDeep(f"nested deeper than {max_depth} levels") from None
    if isinstance(value, (dict, list)) and _too_deep(raw, max_depth):
        raise TooDeep(f"nested deeper than {max_depth} levels")
    return value


class RuntimeClient:
    """HTTP to pipeline processes: ``GET /status``, the actions, and requests forwarded by the API.

    ``token_for`` maps an endpoint (exactly as the backend's ``endpoint()`` returned it) to the
    pipeline's control token, sent as ``Authorization: Bearer`` on every request to it."""

    def __init__(self, status_timeout: float = 5.0, action_timeout: float = 10.0,
                 token_for: Callable[[str], str | None] | None = None) -> None:
        self.status_timeout = status_timeout
        self.action_timeout = action_timeout
        self.token_for = token_for
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, limit_per_host=4), trust_env=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _headers(self, endpoint: str) -> dict[str, str]:
        """The only headers sent to a pipeline: its token, when one is known (never a client's)."""
        token = self.token_for(endpoint) if self.token_for is not None else None
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def status(self, endpoint: str) -> RuntimeObservation:
        """``GET {endpoint}/status`` with Feldera's 5 s timeout, read as Feldera's runner reads it."""
        timeout = aiohttp.ClientTimeout(total=self.status_timeout)
        try:
            async with self.session.get(f"{endpoint}/status", timeout=timeout, headers=self._headers(endpoint),
                                        allow_redirects=False) as response:
                if 300 <= response.status < 400:
                    return parse_status_response(response.status, None)
                chunks, size = [], 0
                async for chunk in response.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > MAX_STATUS_BODY:
                        return parse_status_response(response.status, NOT_JSON,
                                                     f"the status answer is larger than {MAX_STATUS_BODY} bytes")
                    chunks.append(chunk)
                raw = b"".join(chunks)
                try:
                    if not raw:
                        body = None
                    elif len(raw) < _PARSE_IN_THREAD:
                        body = decode_json(raw)
                    else:
                        body = await asyncio.to_thread(decode_json, raw)
                except TooDeep as exc:
                    return parse_status_response(response.status, NOT_JSON, f"the status answer is {exc}")
                except ValueError:
                    body = NOT_JSON
                return parse_status_response(response.status, body, "")
        except TimeoutError:
            return parse_status_response(None, None, f"timed out after {self.status_timeout:g}s")
        except aiohttp.ClientError as exc:
            return parse_status_response(None, None, f"{type(exc).__name__}: {exc}")

    async def _call(self, method: str, endpoint: str, path: str) -> bool:
        """One action; a redirect is a failure (never followed, never sent again elsewhere)."""
        timeout = aiohttp.ClientTimeout(total=self.action_timeout)
        try:
            async with self.session.request(method, f"{endpoint}{path}", timeout=timeout,
                                            headers=self._headers(endpoint), allow_redirects=False) as response:
                if response.status < 300:
                    return True
                if response.status < 400:
                    log.warning("%s %s%s answered a redirect (HTTP %s), which is not followed", method, endpoint,
                                path, response.status)
                    return False
                text = (await response.content.read(2048)).decode(errors="replace")
                log.warning("%s %s%s answered %s: %s", method, endpoint, path, response.status, text)
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("%s %s%s failed: %s", method, endpoint, path, exc)
        return False

    # The timeout is aiohttp's per-request ClientTimeout (None on expiry, as for any failed request).
    async def forward(self, endpoint: str, method: str, path: str, query: str = "",
                      timeout: float = 60.0) -> tuple[int, bytes, str] | None:  # noqa: ASYNC109
        """Forward one request to the pipeline as Feldera's manager does: its status, body (at most
        1 MiB) and content type, or None when it did not answer.

        The body is passed on as bytes, never decoded here (so its nesting does not matter), and no
        header of the client's is passed on: the pipeline sees only the operator's token."""
        url = f"{endpoint}{path}" + (f"?{query}" if query else "")
        try:
            async with self.session.request(method, url, timeout=aiohttp.ClientTimeout(total=timeout),
                                            headers=self._headers(endpoint), allow_redirects=False) as response:
                chunks, size = [], 0
                async for chunk in response.content.iter_chunked(64 * 1024):
                    chunks.append(chunk[:MAX_STATUS_BODY - size])
                    size += len(chunks[-1])
                    if size >= MAX_STATUS_BODY:
                        break
                return response.status, b"".join(chunks), response.content_type
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("%s %s failed: %s", method, url, exc)
            return None

    async def set_runtime_desired(self, endpoint: str, target: SpecRuntimeDesiredStatus, activate: bool) -> bool:
        if activate:
            return await self._call("POST", endpoint, f"/activate?initial={target.value.lower()}")
        path = "/start" if target is SpecRuntimeDesiredStatus.RUNNING else "/pause"
        return await self._call("GET", endpoint, path)

    async def suspend(self, endpoint: str) -> bool:
        return await self._call("POST", endpoint, "/suspend")

    async def approve(self, endpoint: str) -> bool:
        return await self._call("POST", endpoint, "/approve")
