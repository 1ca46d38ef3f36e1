"""YAML with line numbers.

``yaml.safe_load`` forgets where each value came from. We compose the node tree with the
safe loader (so the same tags are accepted, nothing more) and keep it, then construct the
plain Python data from it; :meth:`SourceMap.line` walks the nodes along a path of keys
and indexes to find the line an error should point at.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import yaml


class YAMLSyntaxError(ValueError):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


class SourceMap:
    """Maps paths of keys/indexes (``("states", "build", "timeout")``) to 1-based lines."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def line(self, path: Iterable[Any]) -> int:
        """The line of the deepest node along ``path`` (a key's own line for mappings).

        Paths that leave the tree (a key that is absent, an alias, a merge key) stop at
        the nearest existing ancestor, which is still the right neighbourhood.
        """
        node = self.root
        if node is None:
            return 0
        line = node.start_mark.line + 1
        for part in path:
            if isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                        line = key_node.start_mark.line + 1
                        node = value_node
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode):
                if not isinstance(part, int) or not 0 <= part < len(node.value):
                    return line
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line

    def duplicate_keys(self) -> list[tuple[tuple[Any, ...], str, int]]:
        """``(path of the mapping, key, line)`` for every key repeated in one mapping.

        YAML loaders keep the last of two equal keys silently; a workflow with two
        states of the same name is a mistake worth reporting.
        """
        out: list[tuple[tuple[Any, ...], str, int]] = []

        def walk(node: yaml.Node, path: tuple[Any, ...], seen_nodes: set[int]) -> None:
            if id(node) in seen_nodes:  # aliases can make the graph recursive
                return
            seen_nodes = seen_nodes | {id(node)}
            if isinstance(node, yaml.MappingNode):
                seen: set[str] = set()
                for key_node, value_node in node.value:
                    if isinstance(key_node, yaml.ScalarNode):
                        key = key_node.value
                        if key in seen and key != "<<":
                            out.append((path, key, key_node.start_mark.line + 1))
                        seen.add(key)
                        walk(value_node, (*path, key), seen_nodes)
            elif isinstance(node, yaml.SequenceNode):
                for index, item in enumerate(node.value):
                    walk(item, (*path, index), seen_nodes)

        if self.root is not None:
            walk(self.root, (), set())
        return out


def load_yaml(source: bytes | str) -> tuple[Any, SourceMap]:
    """Parse one YAML document with the safe loader, keeping its node tree.

    Raises:
        YAMLSyntaxError: the text is not YAML (with the line of the problem).
    """
    loader = yaml.SafeLoader(source)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise YAMLSyntaxError(f"invalid YAML: {problem or exc}", line) from None
    except yaml.YAMLError as exc:
        raise YAMLSyntaxError(f"invalid YAML: {exc}", 0) from None
    finally:
        loader.dispose()
    return data, SourceMap(node)


def path_str(path: Sequence[Any]) -> str:
    """``states.build.retry.max_attempts`` / ``inputs[0].name`` for messages."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
