"""Steps 1-3 of loading a graph file: bytes -> text -> YAML nodes -> plain data with the position
of every key and item (see :mod:`mplp_graph.config.load`)."""

from __future__ import annotations

import math
import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from mplp_graph.errors import GraphSpecError, Location


MAX_BYTES = 10 * 1024 * 1024
MAX_NODES = 1_000_000  # values after alias expansion ("billion laughs" documents)
# Nesting depth of lists and mappings, in the text and after alias expansion. A graph needs
# about 6 levels; the limit keeps the recursive composer and builder far from Python's stack
# limit (an alias chain &a1 [*a0], &a2 [*a1], ... is shallow in the text but deep once expanded).
MAX_DEPTH = 100

YAML_TAG = "tag:yaml.org,2002:"
_PLAIN_SCALARS = {YAML_TAG + t for t in ("str", "int", "float", "bool", "null", "timestamp")}
_MERGE = YAML_TAG + "merge"
_TOP_KEYS = "name, groups, arrows, schedule, inputs, outputs"

MSG_NOT_UTF8 = "file is not valid UTF-8: byte 0x{byte:02x} at byte offset {offset} cannot be decoded; save the file as UTF-8"
MSG_TOO_BIG = "file is {size:,} bytes, more than the limit of {limit:,}; a graph file is a few kilobytes, so this is probably not a graph"
MSG_TAG = (
    "only plain YAML is accepted: tags such as {tag} are not allowed (a graph file holds only mappings, "
    "lists, strings, numbers, booleans and null); remove the tag"
)
MSG_CYCLE = "cyclic alias: the value of anchor &{anchor} contains itself (through *{anchor}); a graph cannot refer to itself, so copy the value instead"
MSG_DUP = "duplicate key {key!r}: it is already defined at line {line}; remove one of them or rename it"
MSG_BAD_SCALAR = "{value!r} is tagged {tag} but is not a value of that type; remove the tag or fix the value"
MSG_DEEP = (
    "values are nested more than {limit} levels deep{how}; a graph needs fewer than 10 levels, so look for "
    "unclosed brackets or a chain of aliases"
)
MSG_OVERFLOW = (
    "the number {text} is too large for a 64-bit float (it would become infinity); write a number below 1.8e308 "
    "in magnitude (or quote it if it is meant as text)"
)
# YAML 1.2's float syntax. PyYAML follows YAML 1.1, whose floats need a dot, so a plain `1e-3`
# would be read as the string '1e-3'; this reads it as the number every YAML 1.2 reader sees.
_FLOAT_12 = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)$")
_INF_TEXT = re.compile(r"^[-+]?\.(inf|Inf|INF)$")
MSG_TOP = "the top level of a graph file must be a mapping with keys such as " + _TOP_KEYS + "; found {found}"


def decode_text(raw: bytes, filename: str) -> str:
    """Step 1: UTF-8 text of a file's bytes, or a located error (too big, not UTF-8)."""
    if len(raw) > MAX_BYTES:
        raise GraphSpecError(MSG_TOO_BIG.format(size=len(raw), limit=MAX_BYTES), Location(file=filename))
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        msg = MSG_NOT_UTF8.format(byte=raw[e.start], offset=e.start)
        raise GraphSpecError(msg, Location(filename, line, column)) from None


class _Loader(yaml.SafeLoader):
    """A SafeLoader that also remembers which anchor named each node (for cycle messages)."""

    def __init__(self, stream: str, filename: str):
        super().__init__(stream)
        self.anchor_names: dict[int, str] = {}
        self.filename = filename
        self.depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = event.start_mark
                raise GraphSpecError(MSG_DEEP.format(limit=MAX_DEPTH, how=""), Location(self.filename, mark.line + 1, mark.column + 1))
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        anchor = getattr(event, "anchor", None)
        if anchor is not None and not isinstance(event, yaml.AliasEvent):
            self.anchor_names[id(node)] = anchor
        return node


def compose_nodes(text: str, filename: str) -> tuple[Node | None, dict[int, str]]:
    """Step 2: the YAML node tree (None for an empty document) and the anchor name of each
    anchored node, or a located syntax error."""
    loader = None
    try:
        loader = _Loader(text, filename)  # the reader already refuses control characters here
        return loader.get_single_node(), loader.anchor_names
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        if e.context and e.problem and e.problem.startswith("but found"):  # "expected X, but found Y"
            what = f"{e.context}, {e.problem}"
        elif e.context and e.problem and e.context_mark is not None:
            what = f"{e.problem} ({e.context} at line {e.context_mark.line + 1})"
        else:
            what = e.problem or e.context
        fix = "check the indentation, colons and quoting on this line and the lines just before it"
        if "another document" in what:
            fix = "a graph file holds one YAML document; remove this '---' and what follows"
        elif "'\\t'" in what:
            fix = "indent with spaces: YAML does not allow tabs here"
        msg = f"YAML syntax error: {what}; {fix}"
        loc = Location(filename, mark.line + 1, mark.column + 1) if mark else Location(file=filename)
        raise GraphSpecError(msg, loc) from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        code = e.character if isinstance(e.character, int) else ord(e.character)
        msg = f"the control character U+{code:04X} is not allowed in YAML text; remove it"
        raise GraphSpecError(msg, Location(filename, line, column)) from None
    except RecursionError:
        raise GraphSpecError("YAML nesting is too deep to read; a graph needs only a few levels", Location(file=filename)) from None
    finally:
        if loader is not None:
            loader.dispose()


# ---------------------------------------------------------------------------------------------
# 3: nodes -> data + positions


def child_path(path: str, key: str | int) -> str:
    """The YAML path of a mapping key (``a.b``) or a list item (``a[3]``) under ``path``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(YAML_TAG) :] if tag.startswith(YAML_TAG) else tag


_CONSTRUCTOR = yaml.constructor.SafeConstructor()  # for int/float/bool/null scalars only


class NodeBuilder:
    """Step 3: builds plain data from a node tree, recording the (line, column) of every key and
    item in ``positions`` and the problems found in ``issues``."""

    def __init__(self, filename: str, anchors: dict[int, str]):
        self.filename = filename
        self.anchors = anchors
        self.positions: dict[str, tuple[int, int]] = {}
        self.issues: list[tuple[Location, str]] = []
        self.active: set[int] = set()  # collection nodes on the current path (cycle detection)
        self.count = 0

    def _loc(self, node: Node, path: str) -> Location:
        return Location(self.filename, node.start_mark.line + 1, node.start_mark.column + 1, path)

    def build(self, node: Node, path: str) -> Any:
        if not path:
            self.positions[""] = (node.start_mark.line + 1, node.start_mark.column + 1)
        self.count += 1
        if self.count > MAX_NODES:
            msg = f"the document expands to more than {MAX_NODES:,} values (through aliases); a graph file needs far fewer"
            raise GraphSpecError([(self._loc(node, path), msg)])
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        if len(self.active) >= MAX_DEPTH:  # deep only through aliases: the composer checked the text
            raise GraphSpecError([(self._loc(node, path), MSG_DEEP.format(limit=MAX_DEPTH, how=" once aliases are expanded"))])
        if id(node) in self.active:  # located at the key or item that refers back (*anchor)
            line, column = self.positions.get(path, (node.start_mark.line + 1, node.start_mark.column + 1))
            raise GraphSpecError([(Location(self.filename, line, column, path), MSG_CYCLE.format(anchor=self.anchors.get(id(node), "?")))])
        expected = YAML_TAG + ("map" if isinstance(node, MappingNode) else "seq")
        if node.tag != expected:
            self.issues.append((self._loc(node, path), MSG_TAG.format(tag=_short_tag(node.tag))))
            return None
        self.active.add(id(node))
        try:
            return self._mapping(node, path) if isinstance(node, MappingNode) else self._sequence(node, path)
        finally:
            self.active.discard(id(node))

    def _scalar(self, node: ScalarNode, path: str) -> Any:
        if node.tag not in _PLAIN_SCALARS:
            self.issues.append((self._loc(node, path), MSG_TAG.format(tag=_short_tag(node.tag))))
            return None
        if node.tag == YAML_TAG + "str" and node.style is None and _FLOAT_12.match(node.value):
            return self._float(node, path, float(node.value))  # plain 1e-3: a number (YAML 1.2)
        if node.tag in (YAML_TAG + "str", YAML_TAG + "timestamp"):
            return node.value  # dates stay text: no field of a graph holds a date
        try:
            value = _CONSTRUCTOR.construct_object(node)
        except (ValueError, KeyError, TypeError, yaml.YAMLError):  # an explicit tag on a value that is not of its type: `!!int abc`
            self.issues.append((self._loc(node, path), MSG_BAD_SCALAR.format(value=node.value, tag=_short_tag(node.tag))))
            return None
        return self._float(node, path, value) if isinstance(value, float) else value

    def _float(self, node: ScalarNode, path: str, value: float) -> float | None:
        """``value``, or an issue when the text overflows to infinity without saying `.inf`
        (`1e999`: the number the user wrote cannot be represented)."""
        if math.isinf(value) and not _INF_TEXT.match(node.value.strip()):
            self.issues.append((self._loc(node, path), MSG_OVERFLOW.format(text=node.value)))
            return None
        return value

    def _sequence(self, node: SequenceNode, path: str) -> list:
        out = []
        for k, item in enumerate(node.value):
            sub = child_path(path, k)
            self.positions.setdefault(sub, (item.start_mark.line + 1, item.start_mark.column + 1))
            out.append(self.build(item, sub))
        return out

    def _pairs(self, node: MappingNode, path: str) -> tuple[list, list]:
        """(merged, explicit) key/value node pairs; ``<<: *anchor`` merge keys are expanded."""
        merged, explicit = [], []
        for key, value in node.value:
            if key.tag != _MERGE:
                explicit.append((key, value))
                continue
            for src in value.value if isinstance(value, SequenceNode) else [value]:
                if not isinstance(src, MappingNode):
                    self.issues.append((self._loc(src, path), "'<<' merges a mapping (or a list of mappings) into this one; found something else"))
                    continue
                if id(src) in self.active:
                    raise GraphSpecError([(self._loc(key, path), MSG_CYCLE.format(anchor=self.anchors.get(id(src), "?")))])
                if len(self.active) >= MAX_DEPTH:  # a chain of merges, each merging the previous
                    raise GraphSpecError([(self._loc(key, path), MSG_DEEP.format(limit=MAX_DEPTH, how=" once merge keys are expanded"))])
                self.active.add(id(src))
                sub_merged, sub_explicit = self._pairs(src, path)
                self.active.discard(id(src))
                merged += sub_merged + sub_explicit
        return merged, explicit

    def _mapping(self, node: MappingNode, path: str) -> dict:
        merged, explicit = self._pairs(node, path)
        out: dict[str, Any] = {}
        first: dict[str, Node] = {}
        unique = []
        for key_node, value_node in explicit:
            key = self._key(key_node, path)
            if key is None:
                continue
            if key in first:
                msg = MSG_DUP.format(key=key, line=first[key].start_mark.line + 1)
                self.issues.append((self._loc(key_node, child_path(path, key)), msg))
            else:
                first[key] = key_node
                unique.append((key, key_node, value_node))
        for key_node, value_node in merged:  # merged keys: explicit keys and earlier merges win
            key = self._key(key_node, path)
            if key is not None and key not in first and key not in out:
                self._put(out, path, key, key_node, value_node)
        for key, key_node, value_node in unique:
            self._put(out, path, key, key_node, value_node)
        return out

    def _key(self, node: Node, path: str) -> str | None:
        # Every mapping of a graph is keyed by names, so keys are taken as written (text):
        # `on:` stays 'on' rather than YAML 1.1's boolean True.
        if isinstance(node, ScalarNode) and node.tag in _PLAIN_SCALARS:
            return node.value
        if isinstance(node, ScalarNode):
            self.issues.append((self._loc(node, path), MSG_TAG.format(tag=_short_tag(node.tag))))
        else:
            self.issues.append((self._loc(node, path), "mapping keys must be plain names, not lists or mappings; write the key as a word"))
        return None

    def _put(self, out: dict, path: str, key: str, key_node: Node, value_node: Node) -> None:
        sub = child_path(path, key)
        self.positions.setdefault(sub, (key_node.start_mark.line + 1, key_node.start_mark.column + 1))
        out[key] = self.build(value_node, sub)


