"""The ``cubed`` command line: ``check`` and ``token``."""
from __future__ import annotations

import io
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import jwt
from twisted.trial.unittest import TestCase

from cubed.cli import main

MODEL = Path(__file__).resolve().parent / "conformance" / "model"


def run(argv: list[str], environ: dict[str, str]) -> tuple[int, str, str]:
    """Return (status, stdout, stderr) of one ``cubed`` invocation with a clean environment."""
    out, err = io.StringIO(), io.StringIO()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CUBEJS_", "CUBED_"))}
    with mock.patch.dict(os.environ, {**clean, **environ}, clear=True), redirect_stdout(out), redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


class CliTests(TestCase):
    def test_check_prints_what_would_be_served(self) -> None:
        project = self.mktemp()
        os.makedirs(project)
        status, out, err = run(["check", "--project-dir", project],
                               {"CUBEJS_DEV_MODE": "true", "CUBEJS_SCHEMA_PATH": str(MODEL)})
        self.assertEqual((status, err), (0, ""))
        self.assertIn("cube Orders: 10 measures, 9 dimensions, 2 segments", out)
        self.assertIn("mode:         dev", out)

    def test_check_reports_a_broken_model_on_one_line(self) -> None:
        project = Path(self.mktemp())
        (project / "model").mkdir(parents=True)
        (project / "model" / "bad.yml").write_text("cubes:\n  - name: A\n    sql_table: t\n    dimensions:\n"
                                                   "      - name: d\n        sql: '{nope}'\n        type: string\n")
        status, out, err = run(["check", "--project-dir", str(project)], {"CUBEJS_DEV_MODE": "true"})
        self.assertEqual(status, 1)
        self.assertEqual(len(err.strip().splitlines()), 1)
        self.assertIn("bad.yml", err)
        self.assertIn("member 'd'", err)

    def test_token_is_signed_with_the_secret(self) -> None:
        secret = "s" * 40
        status, out, _err = run(["token", "--secret", secret, "--claims", '{"tenant": "a"}'], {})
        self.assertEqual(status, 0)
        payload = jwt.decode(out.strip(), secret, algorithms=["HS256"])
        self.assertEqual(payload["tenant"], "a")
        self.assertGreater(payload["exp"], payload["iat"])
