"""Errors answered as Feldera's ``ErrorResponse`` (``message``, ``error_code``, ``details``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..core.lifecycle import Refusal
from ..models import ErrorResponse


class ApiError(Exception):
    """An error answered as Feldera's ErrorResponse (with ``Retry-After: 5`` on a 503, as Feldera, or
    the given ``retry_after`` seconds, e.g. on a 429)."""

    def __init__(self, status: int, error_code: str, message: str, details: Any = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.error_code, self.message, self.details = status, error_code, message, details
        self.retry_after = retry_after if retry_after is not None else (5 if status == 503 else None)

    @classmethod
    def refused(cls, refusal: Refusal) -> ApiError:
        return cls(refusal.http_status, refusal.error_code, refusal.message, refusal.details)

    def response(self) -> web.Response:
        body = ErrorResponse(message=self.message, error_code=self.error_code, details=self.details)
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return web.json_response(body.model_dump(mode="json"), status=self.status, headers=headers)


def unknown_pipeline(name: str) -> ApiError:
    return ApiError(404, "UnknownPipelineName", f"Unknown pipeline name '{name[:253]}'",
                    {"pipeline_name": name[:253]})


def bool_param(query: Any, name: str, default: bool) -> bool:
    raw = query.get(name)
    if raw is None:
        return default
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise ApiError(400, "InvalidQueryParameter", f"{name} must be true or false, not '{raw[:20]}'",
                   {"parameter": name})
