"""Strict YAML reading that keeps the position of every value.

PyYAML implements YAML 1.1, which silently turns some plain scalars into values a
stack author did not mean. ``1:30:00`` becomes the integer 5400 (base 60),
``yes``/``no``/``on``/``off`` become booleans and ``0755`` becomes 493 (octal).
A repeated key keeps only its last value. This reader rejects all of those with the
line and the fix, and records where each value sits so that later errors can
point at it too.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import yaml

from ubench_iac.errors import StackError, StackErrors

Path = tuple[str | int, ...]

_TAG = "tag:yaml.org,2002:"
_DECIMAL_INT = re.compile(r"^[-+]?(0|[1-9][0-9]*)$")
_TRUE_FALSE = {"true": True, "false": False}


@dataclasses.dataclass(frozen=True)
class Mark:
    """Position of a value in its file (1-based) and its source text."""

    line: int
    column: int
    text: str | None = None
    """The plain scalar as written, for hints such as 'quote 1.10'."""
    tag: str | None = None


@dataclasses.dataclass
class Document:
    """A parsed YAML document with the position of every value in it."""

    file: str
    data: Any
    marks: dict[Path, Mark]

    def mark(self, path: Path) -> Mark | None:
        """Return the mark of ``path`` or of its closest enclosing value."""
        for end in range(len(path), -1, -1):
            found = self.marks.get(tuple(path[:end]))
            if found is not None:
                return found
        return None

    def error(self, path: Path, message: str, fix: str | None = None) -> StackError:
        """Build a StackError that points at ``path`` in this document."""
        mark = self.mark(path)
        return StackError(
            message,
            file=self.file,
            line=mark.line if mark else None,
            column=mark.column if mark else None,
            field=format_path(path) or None,
            fix=fix,
        )


def format_path(path: Path) -> str:
    """Render a value path as ``services.web.ports[0]``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def read_yaml(text: str, file: str) -> Document:
    """Parse one YAML document strictly; raise StackErrors listing every problem."""
    loader: yaml.SafeLoader | None = None
    try:
        # The constructor already reads the text and rejects control characters.
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise StackError(
            f"invalid YAML: {exc.problem or exc.context}",
            file=file,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
            fix="check the indentation and quoting around this position",
        ) from exc
    except yaml.YAMLError as exc:
        raise StackError(
            f"invalid YAML: {exc}".replace("\n", " "),
            file=file,
            fix="remove control characters and check the file's encoding",
        ) from exc
    finally:
        if loader is not None:
            loader.dispose()

    builder = _Builder(file)
    data = builder.build(node, ()) if node is not None else None
    if builder.errors:
        raise StackErrors(builder.errors)
    return Document(file=file, data=data, marks=builder.marks)


class _Builder:
    """Turn a composed node graph into plain Python values, strictly."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.marks: dict[Path, Mark] = {}
        self.errors: list[StackError] = []

    def build(self, node: yaml.Node, path: Path) -> Any:
        start = node.start_mark
        if isinstance(node, yaml.MappingNode):
            self.marks[path] = Mark(start.line + 1, start.column + 1)
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            self.marks[path] = Mark(start.line + 1, start.column + 1)
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        self.marks[path] = Mark(start.line + 1, start.column + 1, node.value, node.tag)
        return self._scalar(node, path)

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _TAG + "merge":
                self._fail(
                    line,
                    key_node,
                    path,
                    "YAML merge keys (<<) are not supported",
                    "use a recipe and override its fields in the service",
                )
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._fail(line, key_node, path, "a key must be a plain string", None)
                continue
            # Keys are names in every stack field, so take them as written: a
            # key such as `on` or `8000` must not turn into a bool or an int.
            key = key_node.value
            if key in first_line:
                self._fail(
                    line,
                    key_node,
                    (*path, key),
                    f"duplicate key {key!r} (first defined on line "
                    f"{first_line[key]}); YAML would keep only the last value",
                    "remove one of the two entries",
                )
                continue
            first_line[key] = line
            key_path = (*path, key)
            result[key] = self.build(value_node, key_path)
            # Point errors about a key's value at the key's own line.
            value_mark = self.marks[key_path]
            self.marks[key_path] = dataclasses.replace(
                value_mark, line=line, column=key_node.start_mark.column + 1
            )
        return result

    def _scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        text, tag = node.value, node.tag
        line = node.start_mark.line + 1
        if "\x00" in text:
            self._fail(
                line,
                node,
                path,
                "the value contains a NUL character, which no command argument "
                "or environment value can hold",
                "remove the \\0 escape",
            )
            return None

        if tag == _TAG + "str" or node.style is not None:
            return text

        if tag == _TAG + "null":
            return None

        if tag == _TAG + "bool":
            if text.lower() in _TRUE_FALSE:
                return _TRUE_FALSE[text.lower()]
            self._fail(
                line,
                node,
                path,
                f"YAML 1.1 reads {text!r} as a boolean",
                f"write true or false, or quote it ('{text}') for a string",
            )
            return None

        if tag in (_TAG + "int", _TAG + "float") and ":" in text:
            seconds = yaml.safe_load(text)
            self._fail(
                line,
                node,
                path,
                f"YAML 1.1 reads {text} as the base-60 number {seconds}",
                f"quote it: '{text}'",
            )
            return None

        if tag == _TAG + "int":
            if not _DECIMAL_INT.match(text):
                value = yaml.safe_load(text)
                self._fail(
                    line,
                    node,
                    path,
                    f"YAML 1.1 reads {text} as the number {value}",
                    f"write a plain decimal number, or quote it: '{text}'",
                )
                return None
            return int(text)

        if tag == _TAG + "float":
            return float(yaml.safe_load(text))

        if tag == _TAG + "timestamp":
            # A date such as an image tag 2024-01-01: keep the text, as YAML 1.2.
            return text

        self._fail(line, node, path, f"unsupported YAML tag {tag}", "remove the tag")
        return None

    def _fail(
        self, line: int, node: yaml.Node, path: Path, message: str, fix: str | None
    ) -> None:
        self.errors.append(
            StackError(
                message,
                file=self.file,
                line=line,
                column=node.start_mark.column + 1,
                field=format_path(path) or None,
                fix=fix,
            )
        )
