"""The Playground: a page for building queries against the model and seeing their data.

Dev mode only (``CUBEJS_DEV_MODE=true``): the API registers :meth:`Playground.index` at ``/``
and :meth:`Playground.asset` under ``/playground/``. The page is plain static files in this
directory — ``index.html``, ``playground.js`` (an ES module talking to the REST API with
fetch), ``playground.css`` and ``vendor/chart.umd.min.js`` (Chart.js, see vendor/README.md) —
read once at start-up and served from memory. Only those files are served: every other name
under ``/playground/`` answers 404 ``{"error": "Not Found"}`` like any unknown path.
"""
from __future__ import annotations

import hashlib
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from klein import Klein
from twisted.web.iweb import IRequest

HERE = Path(__file__).resolve().parent
ASSETS_PATH = "/playground"
API_URL_PLACEHOLDER = "__CUBED_API_URL__"
CONTENT_TYPES: Mapping[str, str] = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
}
# The page loads its own files and talks to its own server only.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
NOT_FOUND = json.dumps({"error": "Not Found"}, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Asset:
    """One file as served: its bytes, content type and entity tag."""

    body: bytes
    content_type: str

    @property
    def etag(self) -> str:
        return '"%s"' % hashlib.sha256(self.body).hexdigest()[:32]


def load_assets(directory: Path = HERE) -> dict[str, Asset]:
    """Return the static files under ``directory`` by their path relative to it (``vendor/x.js``):
    the .js, .css and .md files, nothing else (no Python, no scripts, not index.html)."""
    assets: dict[str, Asset] = {}
    for path in sorted(directory.rglob("*")):
        content_type = CONTENT_TYPES.get(path.suffix)
        if content_type is None or not path.is_file() or "__pycache__" in path.parts:
            continue
        assets[path.relative_to(directory).as_posix()] = Asset(path.read_bytes(), content_type)
    return assets


class Playground:
    """The Playground's page and static files for an API served at ``api_url`` (e.g.
    ``/cubejs-api/v1``)."""

    def __init__(self, api_url: str, directory: Path = HERE) -> None:
        self.api_url = api_url
        page = (directory / "index.html").read_text(encoding="utf-8")
        page = page.replace(API_URL_PLACEHOLDER, html.escape(api_url, quote=True))
        self.page = Asset(page.encode("utf-8"), "text/html; charset=utf-8")
        self.assets = load_assets(directory)

    def index(self, request: IRequest) -> bytes:
        """Serve the page."""
        request.setHeader(b"content-security-policy", CONTENT_SECURITY_POLICY.encode())
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"x-frame-options", b"DENY")
        return self._serve(request, self.page)

    def asset(self, request: IRequest, name: str) -> bytes:
        """Serve one static file, or 404 JSON when ``name`` is not one of them."""
        asset = self.assets.get(name)
        if asset is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"application/json; charset=utf-8")
            return NOT_FOUND
        return self._serve(request, asset)

    def resource(self) -> Any:
        """Return a twisted.web resource serving the page at ``/`` and the files under
        ``/playground/`` on their own (the API registers the two methods on its routes)."""
        app = Klein()
        app.route("/", methods=["GET"], endpoint="playground")(self.index)
        app.route(f"{ASSETS_PATH}/<path:name>", methods=["GET"], endpoint="playground_asset")(self.asset)
        return app.resource()

    @staticmethod
    def _serve(request: IRequest, asset: Asset) -> bytes:
        etag = asset.etag
        request.setHeader(b"etag", etag.encode())
        # Revalidated on every load: a new cubed version brings new files at the same names.
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        asked = request.getHeader(b"if-none-match")
        if asked is not None and etag in [tag.strip() for tag in asked.decode("latin-1").split(",")]:
            request.setResponseCode(304)
            return b""
        request.setHeader(b"content-type", asset.content_type.encode())
        return asset.body
