"""Run trial and finish with totals a CI can read.

Usage: ``python -m tests.runner [trial options] [tests ...]`` (e.g. ``-j2 tests``). Takes
the same options as ``trial``, runs the tests the way ``trial`` does (serially or with
``-j N`` workers), lets trial print its own report and summary, then prints::

    N skipped
    N passed, N failed

where passed counts successes and failed counts failures, errors and unexpected successes;
skips and expected failures count in neither. The exit status is 1 when anything failed
(2 for a bad option). Should trial itself crash, the traceback is shown and the run counts
as ``0 passed, 1 failed``.

The totals are read from trial's result object, not from its printed summary. The helpers
used to build the runner and the suite (``_makeRunner``, ``_getSuite``) are what
``twisted.scripts.trial.run`` itself calls; they are private, so a Twisted upgrade that
renames them breaks ``make test`` loudly rather than miscounting.
"""
from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

from twisted.python import usage
from twisted.scripts import trial
from twisted.trial.itrial import IReporter


@dataclass(frozen=True)
class Totals:
    """The counts CI reads from one trial run."""

    passed: int
    failed: int
    skipped: int

    def lines(self) -> list[str]:
        """Return the closing lines: skips first, then passed and failed."""
        return [f"{self.skipped} skipped", f"{self.passed} passed, {self.failed} failed"]


def totals(result: IReporter) -> Totals:
    """Return the totals of a finished trial result (serial or ``-j`` run)."""
    return Totals(
        passed=result.successes,
        failed=len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses),
        skipped=len(result.skips),
    )


def run(argv: Sequence[str]) -> int:
    """Run trial with ``argv``, print the totals and return the exit status."""
    config = trial.Options()
    try:
        config.parseOptions(list(argv))
    except usage.error as error:
        print(f"tests.runner: {error}", file=sys.stderr)
        return 2
    trial._initialDebugSetup(config)
    runner = trial._makeRunner(config)
    suite = trial._getSuite(config)
    try:
        result = runner.runUntilFailure(suite) if config["until-failure"] else runner.run(suite)
    except Exception:
        # trial itself crashed (e.g. trial -j reporting an unexpected success): there is no
        # result to count, but CI must still see a failed run.
        traceback.print_exc()
        print("tests.runner: trial crashed before reporting; counting the run as one failure", file=sys.stderr)
        counted = Totals(passed=0, failed=1, skipped=0)
    else:
        counted = totals(result)
    sys.stdout.flush()
    sys.stderr.flush()
    print("\n".join(counted.lines()), flush=True)
    return 1 if counted.failed else 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
