"""Small sqlglot helpers shared by the planner's stages."""
from __future__ import annotations

from typing import Sequence

from sqlglot import exp

_ATOMIC = (exp.Column, exp.Literal, exp.Func, exp.Paren, exp.Identifier, exp.Cast, exp.Case,
           exp.Null, exp.Boolean, exp.Star, exp.Placeholder, exp.Parameter, exp.Subquery)


def paren(node: exp.Expression) -> exp.Expression:
    """Return ``node`` wrapped in parentheses unless it is atomic, so that substituting it
    into a larger expression cannot change precedence (Cube pastes text and gets this wrong)."""
    return node if isinstance(node, _ATOMIC) else exp.Paren(this=node)


def quoted(name: str) -> exp.Identifier:
    """Return a quoted identifier."""
    return exp.Identifier(this=name, quoted=True)


def and_all(parts: Sequence[exp.Expression]) -> exp.Expression:
    """Return ``parts`` joined with AND, left to right (no parentheses added)."""
    result = parts[0]
    for part in parts[1:]:
        result = exp.And(this=result, expression=part)
    return result


def or_all(parts: Sequence[exp.Expression]) -> exp.Expression:
    """Return ``parts`` joined with OR, left to right (no parentheses added)."""
    result = parts[0]
    for part in parts[1:]:
        result = exp.Or(this=result, expression=part)
    return result
