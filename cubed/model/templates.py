"""Cube's SQL template syntax (``{CUBE}.col``, ``{member}``, ``{Cube.member}``) parsed once.

Each ``{...}`` is replaced by a placeholder identifier before sqlglot parses the snippet, so
the tree can be copied into queries and the references resolved per query (aliases differ
between the main query and its sub-queries). ``\\{`` escapes a brace.
"""
from __future__ import annotations

import re

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

from cubed.errors import ModelError
from cubed.model.schema import Ref, SqlTemplate

_REFERENCE = re.compile(r"(?<!\\)\{([^{}]*)\}")
_BARE_IDENTIFIER = re.compile(r"^[_a-zA-Z][_a-zA-Z0-9]*$")
PLACEHOLDER_PREFIX = "__cubedref_"
_PLACEHOLDER = re.compile(r"^__cubedref_\d+__$")
_FOLDED_SELECT = re.compile(r"^\s*select\s+\*\s+from\s+([a-zA-Z0-9_`\".]+)\s*$", re.IGNORECASE)


def is_placeholder(name: str) -> bool:
    """Return whether an identifier is one of our reference placeholders."""
    return name.startswith(PLACEHOLDER_PREFIX) and bool(_PLACEHOLDER.match(name))


def parse_template(source: str, dialect: str, where: str, *, statement: bool = False) -> SqlTemplate:
    """Return the SqlTemplate of ``source`` parsed in ``dialect``.

    ``statement`` parses a whole SELECT (a cube's ``sql``) instead of an expression.
    Raises ModelError naming ``where`` (file, cube, member) when the SQL does not parse.
    """
    text = str(source).strip()
    if not text:
        raise ModelError(f"{where}: sql is empty")
    refs: list[Ref] = []

    def substitute(match: re.Match[str]) -> str:
        placeholder = f"{PLACEHOLDER_PREFIX}{len(refs)}__"
        refs.append(Ref(text=match.group(1).strip(), placeholder=placeholder))
        return placeholder

    rewritten = _REFERENCE.sub(substitute, text).replace("\\{", "{").replace("\\}", "}")
    for ref in refs:
        if not ref.text:
            raise ModelError(f"{where}: empty reference {{}} in sql: {text}")
    try:
        tree = sqlglot.parse_one(rewritten, read=dialect)
    except (ParseError, sqlglot.errors.TokenError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelError(f"{where}: cannot parse sql {text!r}: {first_line}") from None
    if tree is None:
        raise ModelError(f"{where}: sql is empty")
    if statement and not isinstance(tree, (exp.Query, exp.Table)):
        raise ModelError(f"{where}: sql must be a SELECT statement, got: {text}")
    return SqlTemplate(
        source=text,
        tree=tree,
        refs=tuple(refs),
        bare_column=bool(_BARE_IDENTIFIER.match(text)),
    )


FILTER_PARAMS = re.compile(r"^FILTER_PARAMS\.([_a-zA-Z][_a-zA-Z0-9]*)\.([_a-zA-Z][_a-zA-Z0-9]*)\.filter\(\s*(['\"])(.*)\3\s*\)$", re.S)


SECURITY_CONTEXT = re.compile(
    r"^SECURITY_CONTEXT\.((?:[_a-zA-Z][_a-zA-Z0-9]*\.)*[_a-zA-Z][_a-zA-Z0-9]*)"
    r"\.(?:(filter|requiredFilter)\(\s*(['\"])(.*)\3\s*\)|(unsafeValue)\(\s*\))$",
    re.S,
)


def folded_table_name(template: SqlTemplate) -> str | None:
    """Return ``t`` when a cube's sql is exactly ``SELECT * FROM t`` (Cube inlines the table)."""
    if template.refs:
        return None
    match = _FOLDED_SELECT.match(template.source)
    return match.group(1) if match else None
