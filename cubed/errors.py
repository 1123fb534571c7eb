"""The errors cubed answers with, each carrying its HTTP status and Cube's body shape.

One mapper (cubed/api/errors.py) turns these into responses; everything else that escapes
a handler is an internal error (500) whose detail goes to the log only.
"""
from __future__ import annotations

from typing import Any


class CubedError(Exception):
    """Base of every error that has a defined answer to the client."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, Any]:
        """Return the JSON body Cube sends for this error."""
        return {"error": self.message}


class UserError(CubedError):
    """A bad request found by the API gateway (Cube's gateway UserError): 400 ``{"error"}``."""

    status = 400


class CompileError(UserError):
    """A bad request found while compiling the query against the model (Cube's schema-compiler
    UserError): 400 ``{"type": "UserError", "error"}``."""

    def body(self) -> dict[str, Any]:
        return {"type": "UserError", "error": self.message}


class AuthError(CubedError):
    """Authentication failed: 403 with Cube's texts (``Authorization header isn't set``,
    ``Invalid token``)."""

    status = 403


class DatabaseError(CubedError):
    """The database rejected or failed the query: 400 ``{"error": "Error: <db message>"}``."""

    status = 400

    def body(self) -> dict[str, Any]:
        return {"error": f"Error: {self.message}"}


class ServiceUnavailable(CubedError):
    """A backend (database, Redis) is unreachable right now: 503."""

    status = 503


class InternalError(CubedError):
    """A server-side failure with a message safe to show: 500 ``{"error": "Error: ..."}``."""

    status = 500

    def body(self) -> dict[str, Any]:
        return {"error": f"Error: {self.message}"}


class ContinueWait(CubedError):
    """The query is still queued or running: 200 ``{"error": "Continue wait", "stage": ...}``."""

    status = 200

    def __init__(self, stage: dict[str, Any] | None = None, progress: dict[str, Any] | None = None) -> None:
        super().__init__("Continue wait")
        self.stage = stage
        self.progress = progress

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": "Continue wait"}
        if self.stage is not None:
            body["stage"] = self.stage
        if self.progress is not None:
            body["progress"] = self.progress
        return body


class ModelError(Exception):
    """The data model is invalid; the message names the file, the cube and the member."""


class ConfigError(Exception):
    """A setting is invalid; the message is one line naming the setting."""
