"""Reading Cube YAML model files into plain dictionaries, each tagged with its file and line.

This is blocking file work: callers run it in a thread (``ModelRegistry`` does).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cubed.errors import ModelError

MODEL_SUFFIXES = (".yml", ".yaml")
TOP_LEVEL_KEYS = ("cubes", "views")


@dataclass(frozen=True)
class RawDefinition:
    """One cube or view as written: its dictionary, the file and the line it starts on."""

    kind: str  # "cube" | "view"
    body: dict[str, Any]
    file: str
    line: int


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of every mapping (under ``__line__``)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        mapping = super().construct_mapping(node, deep=deep)
        mapping["__line__"] = node.start_mark.line + 1
        return mapping


def strip_lines(value: Any) -> Any:
    """Return ``value`` with the ``__line__`` bookkeeping keys removed (recursively)."""
    if isinstance(value, dict):
        return {k: strip_lines(v) for k, v in value.items() if k != "__line__"}
    if isinstance(value, list):
        return [strip_lines(v) for v in value]
    return value


def model_files(directory: Path) -> list[Path]:
    """Return the model files under ``directory``, sorted so loading is deterministic."""
    if not directory.is_dir():
        raise ModelError(f"{directory}: model directory does not exist (CUBEJS_SCHEMA_PATH)")
    return sorted(p for p in directory.rglob("*") if p.suffix in MODEL_SUFFIXES and p.is_file())


def load_file(path: Path, display_name: str | None = None) -> list[RawDefinition]:
    """Return the cubes and views defined in one YAML file; ModelError names the file on error."""
    name = display_name or str(path)
    try:
        text = path.read_text(encoding="utf-8")
        document = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise ModelError(f"{name}: invalid YAML: {error}".replace("\n", " ")) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ModelError(f"{name}: cannot read: {error}") from None
    if document is None:
        return []
    if not isinstance(document, dict):
        raise ModelError(f"{name}: a model file must be a mapping with 'cubes' and/or 'views'")
    definitions: list[RawDefinition] = []
    for key, value in document.items():
        if key == "__line__":
            continue
        if key not in TOP_LEVEL_KEYS:
            raise ModelError(f"{name}: Unexpected YAML key: {key}. Only 'cubes' and 'views' are allowed here.")
        if value is None:
            continue
        if not isinstance(value, list):
            raise ModelError(f"{name}: '{key}' must be a list")
        for item in value:
            if not isinstance(item, dict):
                raise ModelError(f"{name}: every entry of '{key}' must be a mapping with a name")
            definitions.append(
                RawDefinition(kind=key[:-1], body=item, file=name, line=int(item.get("__line__", 0)))
            )
    return definitions


def load_directory(directory: Path) -> list[RawDefinition]:
    """Return every cube and view of every model file under ``directory``."""
    definitions: list[RawDefinition] = []
    for path in model_files(directory):
        definitions.extend(load_file(path, str(path.relative_to(directory))))
    return definitions
