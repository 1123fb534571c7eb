"""The ``cubed`` command: ``cubed check`` validates a project directory's settings and model
and prints what it would serve; ``cubed token`` prints a JWT for testing."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Sequence

import jwt

from cubed.errors import ConfigError, ModelError


def _check(args: argparse.Namespace) -> int:
    from cubed.config import load_settings
    from cubed.model.registry import compile_directory

    try:
        settings = load_settings(None, args.project_dir, {})
        # Each driver renders SQL in the dialect named like its database type.
        db_types = {ds.name: ds.db_type for ds in settings.data_sources}
        started = time.perf_counter()
        compiled = compile_directory(settings.resolved_schema_path, db_types.__getitem__, db_types.__getitem__)
        elapsed = time.perf_counter() - started
    except (ConfigError, ModelError) as error:
        print(f"cubed: {error}", file=sys.stderr)
        return 1
    model = compiled.model
    print(f"project:      {settings.project_dir}")
    print(f"model:        {settings.resolved_schema_path} ({len(model.cubes)} cubes and views, "
          f"compiled in {elapsed * 1000:.0f} ms, version {model.version})")
    for ds in settings.data_sources:
        where = ds.duckdb_path if ds.db_type == "duckdb" else f"{ds.host or 'localhost'}:{ds.port or 5432}/{ds.database}"
        print(f"data source:  {ds.name}: {ds.db_type} {where}")
    print(f"listen:       {settings.listen}{settings.base_path}")
    print(f"mode:         {'dev' if settings.dev_mode else 'production'}")
    for cube in model.cubes.values():
        kind = "view" if cube.is_view else "cube"
        print(f"  {kind} {cube.name}: {len(cube.measures)} measures, {len(cube.dimensions)} dimensions, "
              f"{len(cube.segments)} segments")
    return 0


def _token(args: argparse.Namespace) -> int:
    try:
        claims = json.loads(args.claims)
    except json.JSONDecodeError as error:
        print(f"cubed: --claims is not JSON: {error}", file=sys.stderr)
        return 2
    if not isinstance(claims, dict):
        print("cubed: --claims must be a JSON object", file=sys.stderr)
        return 2
    now = int(time.time())
    payload = {"iat": now, "exp": now + args.expires_in, **claims}
    print(jwt.encode(payload, args.secret, algorithm=args.algorithm))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cubed`` command line; return the process exit status."""
    parser = argparse.ArgumentParser(prog="cubed", description="cubed: Cube's REST API on Twisted")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate the project's settings and model, print what would be served")
    check.add_argument("--project-dir", default=".", help="project directory (default: .)")
    check.set_defaults(run=_check)
    token = commands.add_parser("token", help="print a JWT signed with a secret, for testing")
    token.add_argument("--secret", required=True, help="CUBEJS_API_SECRET of the server")
    token.add_argument("--claims", default="{}", help="JSON object of claims (the security context)")
    token.add_argument("--expires-in", type=int, default=86400, help="seconds until exp (default: 86400)")
    token.add_argument("--algorithm", default="HS256", choices=("HS256", "HS384", "HS512"))
    token.set_defaults(run=_token)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
