"""Talking to a pipeline process over Feldera's runtime HTTP contract."""

from __future__ import annotations

import json
import logging

import aiohttp

from .core.lifecycle import NOT_JSON, RuntimeObservation, parse_status_response
from .models import SpecRuntimeDesiredStatus

log = logging.getLogger(__name__)

MAX_STATUS_BODY = 1024 * 1024  # a larger /status answer is not read


class RuntimeClient:
    def __init__(self, status_timeout: float = 5.0, action_timeout: float = 10.0) -> None:
        self.status_timeout = status_timeout
        self.action_timeout = action_timeout
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

    async def status(self, endpoint: str) -> RuntimeObservation:
        """``GET {endpoint}/status`` with Feldera's 5 s timeout, read as Feldera's runner reads it."""
        timeout = aiohttp.ClientTimeout(total=self.status_timeout)
        try:
            async with self.session.get(f"{endpoint}/status", timeout=timeout) as response:
                chunks, size = [], 0
                async for chunk in response.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > MAX_STATUS_BODY:
                        return parse_status_response(response.status, NOT_JSON,
                                                     f"the status answer is larger than {MAX_STATUS_BODY} bytes")
                    chunks.append(chunk)
                raw = b"".join(chunks)
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = NOT_JSON
                return parse_status_response(response.status, body, "")
        except TimeoutError:
            return parse_status_response(None, None, f"timed out after {self.status_timeout:g}s")
        except aiohttp.ClientError as exc:
            return parse_status_response(None, None, f"{type(exc).__name__}: {exc}")

    async def _call(self, method: str, endpoint: str, path: str) -> bool:
        timeout = aiohttp.ClientTimeout(total=self.action_timeout)
        try:
            async with self.session.request(method, f"{endpoint}{path}", timeout=timeout) as response:
                if response.status < 300:
                    return True
                text = (await response.content.read(2048)).decode(errors="replace")
                log.warning("%s %s%s answered %s: %s", method, endpoint, path, response.status, text)
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("%s %s%s failed: %s", method, endpoint, path, exc)
        return False

    # The timeout is aiohttp's per-request ClientTimeout (None on expiry, as for any failed request).
    async def forward(self, endpoint: str, method: str, path: str, query: str = "",
                      timeout: float = 60.0) -> tuple[int, bytes, str] | None:  # noqa: ASYNC109
        """Forward one request to the pipeline as Feldera's manager does: its status, body (at most
        1 MiB) and content type, or None when it did not answer."""
        url = f"{endpoint}{path}" + (f"?{query}" if query else "")
        try:
            async with self.session.request(method, url, timeout=aiohttp.ClientTimeout(total=timeout),
                                            allow_redirects=False) as response:
                body = await response.content.read(MAX_STATUS_BODY)
                return response.status, body, response.content_type
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
