"""Security tests: token attacks and key handling, query injection, fuzzing of the HTTP API."""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from twisted.internet.threads import deferToThread

from cubed.config import Settings, load_settings
from cubed.demo import build_demo_database, demo_model_dir
from tests.support.server import TEST_SECRET

_demo_path: Path | None = None


def _demo_database() -> Path:
    """Return this process's demo DuckDB file, built once (blocking). Built once and never
    checked again: several servers of one test may have it open at the same time."""
    global _demo_path
    if _demo_path is None:
        directory = Path(tempfile.mkdtemp(prefix="cubed-security-demo-"))
        atexit.register(shutil.rmtree, str(directory), True)
        _demo_path = build_demo_database(directory / "demo.duckdb")
    return _demo_path


async def demo_settings(**environ: str) -> Settings:
    """Return production-mode Settings for the demo on DuckDB (``environ`` adds variables)."""
    path = await deferToThread(_demo_database)
    base = {
        "CUBEJS_DB_TYPE": "duckdb",
        "CUBEJS_DB_DUCKDB_DATABASE_PATH": str(path),
        "CUBEJS_SCHEMA_PATH": str(demo_model_dir()),
        "CUBEJS_API_SECRET": TEST_SECRET,
    }
    return load_settings({**base, **environ}, str(path.parent))
