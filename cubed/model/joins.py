"""The join graph: directed edges from each cube's ``joins``, join trees for a set of cubes,
which cubes a tree multiplies (fan-out), and connected components for ``/v1/meta``.

Follows Cube's rules: for every candidate root (in the order the query names the cubes)
build a tree of shortest paths to every other cube; keep the tree with the fewest joins,
the earliest root on ties; no tree -> ``Can't find join path to join 'A', 'B'``.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Union

from cubed.errors import CompileError
from cubed.model.schema import Join, Model


@dataclass(frozen=True)
class JoinTree:
    """The cubes of one query joined from ``root``: ``joins`` in the order they are rendered,
    ``multiplied`` the cubes whose rows the joins repeat."""

    root: str
    joins: tuple[Join, ...]
    multiplied: frozenset[str]

    @property
    def cubes(self) -> tuple[str, ...]:
        """Return the root and every joined cube, in join order."""
        return (self.root,) + tuple(j.target for j in self.joins)


Hint = Union[str, tuple[str, ...]]


class JoinGraph:
    """Join paths of one compiled model; ``build`` results are memoised per cube list."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.edges: dict[tuple[str, str], Join] = {}
        self.neighbours: dict[str, list[str]] = {}
        for cube in model.cubes.values():
            for join in cube.joins:
                self.edges[(join.source, join.target)] = join
                self.neighbours.setdefault(join.source, []).append(join.target)
        self.build = lru_cache(maxsize=4096)(self._build)
        self._components = self._connected_components()

    def _shortest_path(self, start: str, goal: str) -> list[str] | None:
        if start == goal:
            return [start]
        previous: dict[str, str] = {start: start}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            for nxt in self.neighbours.get(node, ()):
                if nxt in previous:
                    continue
                previous[nxt] = node
                if nxt == goal:
                    path = [goal]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return path[::-1]
                queue.append(nxt)
        return None

    def _tree_for_root(self, root: str, others: tuple[Hint, ...]) -> list[Join] | None:
        joins: list[Join] = []
        for hint in others:
            # A path hint (from a view's join_path) is walked hop by hop from the root.
            targets = hint if isinstance(hint, tuple) else (hint,)
            previous = root
            for target in targets:
                if target == previous:
                    continue
                path = self._shortest_path(previous, target)
                if path is None:
                    return None
                for a, b in zip(path, path[1:]):
                    edge = self.edges[(a, b)]
                    if edge not in joins:
                        joins.append(edge)
                previous = target
        return joins

    def _build(self, hints: tuple[Hint, ...]) -> JoinTree:
        """Return the JoinTree joining ``hints`` (cube names, or join paths as tuples);
        their order matters for the choice of root."""
        best: tuple[str, list[Join]] | None = None
        for index, candidate in enumerate(hints):
            others = hints[:index] + hints[index + 1:]
            if isinstance(candidate, tuple):
                root = candidate[0]
                others = ((candidate[1:],) if len(candidate) > 1 else ()) + others
            else:
                root = candidate
            joins = self._tree_for_root(root, others)
            if joins is not None and (best is None or len(joins) < len(best[1])):
                best = (root, joins)
        cubes = tuple(dict.fromkeys(c for hint in hints for c in (hint if isinstance(hint, tuple) else (hint,))))
        if best is None:
            names = ", ".join(f"'{c}'" for c in cubes)
            raise CompileError(f"Can't find join path to join {names}")
        root, joins = best
        return JoinTree(root=root, joins=tuple(joins),
                        multiplied=self._multiplied(tuple(dict.fromkeys((root,) + tuple(j.target for j in joins))), joins))

    @staticmethod
    def _multiplied(cubes: tuple[str, ...], joins: list[Join]) -> frozenset[str]:
        def multiplies(cube: str, join: Join) -> bool:
            return (join.source == cube and join.relationship == "one_to_many") or (
                join.target == cube and join.relationship == "many_to_one"
            )

        def other_end(cube: str, join: Join) -> str:
            return join.target if join.source == cube else join.source

        result: set[str] = set()
        for cube in cubes:
            visited: set[str] = set()

            def walk(current: str) -> bool:
                if current in visited:
                    return False
                visited.add(current)
                touching = [j for j in joins if current in (j.source, j.target)]
                if any(multiplies(current, j) and other_end(current, j) not in visited for j in touching):
                    return True
                return any(walk(other_end(current, j)) for j in touching)

            if walk(cube):
                result.add(cube)
        return frozenset(result)

    def _connected_components(self) -> dict[str, int]:
        undirected: dict[str, list[str]] = {}
        sources: list[str] = []
        for (a, b) in self.edges:
            undirected.setdefault(a, []).append(b)
            undirected.setdefault(b, []).append(a)
            if a not in sources:
                sources.append(a)
        components: dict[str, int] = {}
        component_id = 1
        for node in sources:
            if node not in components:
                stack = [node]
                while stack:
                    current = stack.pop()
                    if current in components:
                        continue
                    components[current] = component_id
                    stack.extend(undirected.get(current, ()))
            # Cube numbers one id per cube that has joins, used or not; keep its numbering.
            component_id += 1
        return components

    @property
    def connected_components(self) -> Mapping[str, int]:
        """Return the component id of every cube that takes part in a join."""
        return self._components
