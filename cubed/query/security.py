"""``SECURITY_CONTEXT`` in model SQL: the request's verified security context as SQL.

    {SECURITY_CONTEXT.tenant.filter('tenant_id')}          tenant_id = $1   (1 = 1 when absent)
    {SECURITY_CONTEXT.tenant.requiredFilter('tenant_id')}  tenant_id = $1   (400 when absent)
    {SECURITY_CONTEXT.org.id.unsafeValue()}                $1               (the value itself)

Every value is a bound parameter; an array value filters with ``IN`` (and an ``unsafeValue``
array inside ``IN (...)`` becomes one parameter per element). Nested keys are paths.
"""
from __future__ import annotations

from typing import Any, Mapping

import sqlglot
from sqlglot import exp

from cubed.errors import CompileError
from cubed.model.templates import SECURITY_CONTEXT
from cubed.query.filters import ParamAllocator

_MISSING = object()


class ExpandInList(exp.Tuple):
    """Parameters of an array ``unsafeValue``: spliced into an enclosing ``IN (...)`` list."""


def lookup(context: Mapping[str, Any], path: str) -> Any:
    """Return the value at a dotted path of the security context, or ``_MISSING``."""
    value: Any = context
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def render_security_context(text: str, context: Mapping[str, Any], params: ParamAllocator,
                            dialect: str) -> exp.Expression:
    """Return the SQL of one ``{SECURITY_CONTEXT...}`` reference for ``context``."""
    match = SECURITY_CONTEXT.match(text)
    if match is None:
        raise CompileError(f"{{{text}}} must read {{SECURITY_CONTEXT.<key>.filter('<sql>')}}, "
                           "requiredFilter('<sql>') or unsafeValue()")
    path, method, column_sql, unsafe = match.group(1), match.group(2), match.group(4), match.group(5)
    value = lookup(context, path)
    if unsafe:
        if value is _MISSING or value is None:
            return exp.Null()
        if isinstance(value, (list, tuple)):
            return ExpandInList(expressions=[params.allocate(_scalar(v)) for v in value])
        return params.allocate(_scalar(value))
    column = sqlglot.parse_one(column_sql, read=dialect)
    if value is _MISSING or value is None:
        if method == "requiredFilter":
            raise CompileError(f"Filter for {column_sql} is required")
        return exp.EQ(this=exp.Literal.number(1), expression=exp.Literal.number(1))
    if isinstance(value, (list, tuple)):
        if not value:
            return exp.EQ(this=exp.Literal.number(1), expression=exp.Literal.number(0))
        return exp.In(this=column, expressions=[params.allocate(_scalar(v)) for v in value])
    return exp.EQ(this=column, expression=params.allocate(_scalar(value)))


def _scalar(value: Any) -> Any:
    # Context values feed SQL as text, as Cube binds them; objects cannot be bound.
    if isinstance(value, (dict, list, tuple)):
        raise CompileError("A security context value used in SQL must be a string, a number or a list of them")
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def splice_in_lists(tree: exp.Expression) -> exp.Expression:
    """Return ``tree`` with array ``unsafeValue`` parameters spliced into their ``IN`` lists."""
    for node in list(tree.find_all(exp.In)):
        items = node.args.get("expressions") or []
        if any(isinstance(item, ExpandInList) for item in items):
            flat: list[exp.Expression] = []
            for item in items:
                flat.extend(item.expressions if isinstance(item, ExpandInList) else [item])
            node.set("expressions", flat)
    for leftover in list(tree.find_all(ExpandInList)):
        leftover.replace(exp.Tuple(expressions=leftover.expressions))
    return tree
