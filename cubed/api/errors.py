"""The one place exceptions become HTTP answers (Cube's handleError order).

Known errors answer with their own status and Cube's body; anything else is a 500 whose
detail stays in the log (with the request id), never a traceback to the client unless dev
mode asks for the stack.
"""
from __future__ import annotations

import traceback
from typing import Any

from twisted.python.failure import Failure

from cubed.errors import CubedError

INTERNAL_MESSAGE = "Internal Server Error"


def error_body(error: BaseException, request_id: str, dev_mode: bool) -> tuple[int, dict[str, Any], bool]:
    """Return (status, body, unexpected) for an exception; ``unexpected`` marks a 500 that
    must be logged with its traceback."""
    if isinstance(error, CubedError):
        body = error.body()
        if dev_mode:
            body["requestId"] = request_id
        return error.status, body, False
    body = {"error": f"Error: {INTERNAL_MESSAGE}", "requestId": request_id}
    if dev_mode:
        body["stack"] = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return 500, body, True


def unwrap(failure_or_error: Failure | BaseException) -> BaseException:
    """Return the exception inside a Failure (or the exception itself)."""
    if isinstance(failure_or_error, Failure):
        return failure_or_error.value
    return failure_or_error
