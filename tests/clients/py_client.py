"""Run a list of tasks with the Python ``cube-http-client`` (``import cube_http``) and print one
JSON line: ``{"results": [...]}``.

Run by tests/clients/test_python_client.py in a child process whose PYTHONPATH is the private
install of the client (tests/clients/python_packages/<hash>), so neither the client nor its
dependencies (httpx, pydantic) enter the project's venv or the trial process::

    python py_client.py <job.json>

job.json: ``{"url": "http://127.0.0.1:PORT/cubejs-api", "token": "<jwt>", "tasks": [...]}``; ops:

- ``version`` -> the installed distribution's version
- ``load {request}`` -> ``cube.v1.load(request)`` dumped (``model_dump(by_alias=True)``)
- ``meta`` -> ``cube.v1.meta()`` dumped
- ``sql {request}`` -> ``cube.v1.sql(request)`` dumped
- ``dry_run {request}`` -> the client has no dry-run method: a GET through the client's own
  route machinery and HTTP session (its base URL, Authorization and headers), as ``meta`` does
- ``parse_load {body}`` -> a recorded /v1/load answer parsed by the client's response model, to
  see what the client makes of the real Cube's answer

A task that fails gives ``{"error": ..., "type": <exception class>, "status": ...}``.
"""
from __future__ import annotations

import json
import sys
from importlib.metadata import version
from typing import Any

import cube_http
from cube_http.routes._base import SyncRoute
from cube_http.types.v1.load_response import V1LoadResponse


def _dump(model: Any) -> Any:
    return model.model_dump(by_alias=True, mode="json")


def run(cube: Any, task: dict[str, Any]) -> Any:
    """Return the outcome of one task (raises what the client raises)."""
    op = task["op"]
    if op == "version":
        return version("cube-http-client")
    if op == "load":
        return _dump(cube.v1.load(task["request"]))
    if op == "meta":
        return _dump(cube.v1.meta())
    if op == "sql":
        return _dump(cube.v1.sql(task["request"]))
    if op == "dry_run":
        params = {key: json.dumps(value) if not isinstance(value, str) else value
                  for key, value in task["request"].items()}
        response = SyncRoute(cube.http_client)._get("/v1/dry-run", params=params)
        return {"status": response.status_code, "body": response.json()}
    if op == "parse_load":
        return _dump(V1LoadResponse.model_validate(task["body"]))
    raise ValueError(f"unknown op {op}")


def main(path: str) -> None:
    """Run the job in ``path`` and print the results."""
    with open(path, encoding="utf-8") as source:
        job = json.load(source)
    results: list[dict[str, Any]] = []
    with cube_http.Client({"url": job["url"], "token": job["token"], "timeout": 60.0}) as cube:
        for task in job["tasks"]:
            try:
                results.append({"ok": run(cube, task)})
            except Exception as error:  # reported to the test, which judges it
                results.append({"error": str(error), "type": type(error).__name__,
                                "status": getattr(error, "status_code", None)})
    sys.stdout.write(json.dumps({"results": results}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
