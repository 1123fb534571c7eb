"""Running several Deferreds at once."""
from __future__ import annotations

from typing import Any, Iterable

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.python.failure import Failure


def gather(deferreds: Iterable[Deferred[Any]]) -> Deferred[list[Any]]:
    """Return a Deferred firing with every result, in order, once all have fired; or failing
    with the first error itself (not gatherResults' FirstError wrapper), so that callers and
    the API's error mapper see the original exception."""
    return gatherResults(list(deferreds), consumeErrors=True).addErrback(_unwrap_first_error)


def _unwrap_first_error(failure: Failure) -> Failure:
    if failure.check(FirstError):
        return failure.value.subFailure
    return failure
