"""load_graph(path) -> GraphSpec: YAML text -> located data -> pydantic spec -> verify.

The pipeline, one step per function, each step reporting ``file:line:col yaml.path: message``:

1. ``_decode``: bytes -> text (UTF-8 only, at most :data:`MAX_BYTES`).
2. ``_compose``: text -> YAML node tree (``yaml.compose`` on a SafeLoader subclass), so syntax
   errors carry their line and column and no Python object is ever constructed.
3. ``_Builder``: node tree -> plain data (dicts, lists, scalars) plus the position of every mapping
   key and sequence item, keyed by YAML path (``arrows[3].map``, ``groups.W0.state.x.shape[0]``).
   It refuses duplicate keys, non-plain tags and cyclic aliases.
4. ``_validation_issues``: ``GraphSpec.model_validate(data)``; every pydantic error becomes one
   located issue saying what was expected, what was found, and how to fix it.
5. ``verify(spec, locate=...)``: the IR rules (mplp_graph/ir/verify.py), located the same way.

``dump_graph`` writes the YAML form of a spec (aliases, defaults left out), so that
``loads_graph(dump_graph(spec)) == spec``.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from typing import Any, Callable, Union

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from mplp_graph.errors import GraphSpecError, Location
from mplp_graph.ir.spec import GraphSpec
from mplp_graph.ir.verify import verify

# Sanity limits: a graph file is a few kilobytes; refuse inputs that could only exhaust memory.
MAX_BYTES = 10 * 1024 * 1024
MAX_NODES = 1_000_000  # values after alias expansion ("billion laughs" documents)

_YAML = "tag:yaml.org,2002:"
_PLAIN_SCALARS = {_YAML + t for t in ("str", "int", "float", "bool", "null", "timestamp")}
_MERGE = _YAML + "merge"
_TOP_KEYS = "name, groups, arrows, schedule, inputs, outputs"

MSG_NOT_UTF8 = "file is not valid UTF-8: byte 0x{byte:02x} at byte offset {offset} cannot be decoded; save the file as UTF-8"
MSG_TOO_BIG = "file is {size:,} bytes, more than the limit of {limit:,}; a graph file is a few kilobytes, so this is probably not a graph"
MSG_TAG = (
    "only plain YAML is accepted: tags such as {tag} are not allowed (a graph file holds only mappings, "
    "lists, strings, numbers, booleans and null); remove the tag"
)
MSG_CYCLE = "cyclic alias: the value of anchor &{anchor} contains itself (through *{anchor}); a graph cannot refer to itself, so copy the value instead"
MSG_DUP = "duplicate key {key!r}: it is already defined at line {line}; remove one of them or rename it"
MSG_TOP = "the top level of a graph file must be a mapping with keys such as " + _TOP_KEYS + "; found {found}"

# What a key holds, used in "how to fix" hints (keys as written in YAML).
FIELD_HELP = {
    "name": "a non-empty name",
    "description": "free text",
    "groups": "a mapping from group names to groups",
    "kind": "a word naming the kind of agents (weight, bias, activation, loss, input...) or of init (zeros, constant, normal, uniform)",
    "shape": "a list of positive integers, e.g. [4, 6]",
    "state": "a mapping from field names to fields",
    "dtype": "one of float32, float64, int32, bool",
    "batched": "true or false",
    "init": "zeros, or a mapping such as {kind: normal, std: 0.05}",
    "constant_along": "a list of agent axis numbers, e.g. [1]",
    "arrows": "a list of arrows",
    "from": "the name of the source group",
    "to": "the name of the destination group",
    "phase": "a phase name such as forward or backward",
    "op": "an op name such as mul, or a mapping {name: sgd, args: {lr: 0.1}}",
    "args": "a mapping from argument names to numbers, booleans or strings",
    "inputs": "a list of state field names (in an arrow) or a mapping from batch keys to 'group.field' (at the top level)",
    "outputs": "a mapping from output names to 'group.field'",
    "map": "an index map such as 'i -> i j' or identity",
    "edges": "a list of [source, destination] pairs of flat agent indices",
    "aggregate": "one of mean, sum, max",
    "into": "the name of a state field of the destination group",
    "updates": "a mapping from source state fields to op outputs, e.g. {w: message}",
    "share": "a parameter-sharing key (any name)",
    "schedule": "a mapping with keys phases and step",
    "phases": "a mapping from phase names to lists of stages (lists of arrow names)",
    "step": "a list of phase names",
    "std": "a positive number, e.g. 0.05",
    "mean": "a number",
    "value": "a number",
    "low": "a number",
    "high": "a number",
}

_TYPE_WORDS = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "a boolean (true or false)",
    "bool_parsing": "a boolean (true or false)",
    "tuple_type": "a list",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}

_MODEL_WORDS = {
    "GraphSpec": "the graph",
    "GroupSpec": "a group",
    "FieldSpec": "a state field",
    "ArrowSpec": "an arrow",
    "OpRef": "an op",
    "ScheduleSpec": "the schedule",
    "ZerosInit": "a zeros init",
    "ConstantInit": "a constant init",
    "NormalInit": "a normal init",
    "UniformInit": "a uniform init",
}


# ---------------------------------------------------------------------------------------------
# public API


def load_graph(path: str | os.PathLike) -> GraphSpec:
    """Read, validate and verify the graph file at ``path``. Raises :class:`GraphSpecError`."""
    filename = os.fspath(path)
    size = os.path.getsize(filename)
    if size > MAX_BYTES:
        raise GraphSpecError(MSG_TOO_BIG.format(size=size, limit=MAX_BYTES), Location(file=filename))
    with open(filename, "rb") as f:
        return loads_graph(f.read(), filename=filename)


def loads_graph(text: str | bytes, filename: str = "<string>") -> GraphSpec:
    """Like :func:`load_graph` for YAML text (or bytes) already in memory."""
    if isinstance(text, bytes):
        text = _decode(text, filename)
    elif len(text) > MAX_BYTES:
        raise GraphSpecError(MSG_TOO_BIG.format(size=len(text), limit=MAX_BYTES), Location(file=filename))
    node, anchors = _compose(text, filename)
    builder = _Builder(filename, anchors)
    data = builder.build(node, "") if node is not None else None
    if builder.issues:
        raise GraphSpecError(builder.issues)
    if not isinstance(data, dict):
        found = "an empty document" if data is None else _kind_of(data)
        raise GraphSpecError(MSG_TOP.format(found=found), Location(filename, 1, 1))
    locate = _locator(filename, builder.positions)
    try:
        spec = GraphSpec.model_validate(data)
    except ValidationError as e:
        raise GraphSpecError(_validation_issues(e, data, locate)) from None
    return verify(spec, locate=locate)


def dump_graph(spec: GraphSpec) -> str:
    """YAML text of ``spec`` (YAML keys, defaults left out, ``op``/``init`` shorthands used)."""
    data = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    for group in data.get("groups", {}).values():
        state = group.get("state", {})
        for fname, field in state.items():
            if isinstance(field.get("init"), dict) and list(field["init"]) == ["kind"]:
                field["init"] = field["init"]["kind"]
            state[fname] = _Flow(field)
    for arrow in data.get("arrows", []):
        arrow["op"] = arrow["op"]["name"] if list(arrow["op"]) == ["name"] else _Flow(arrow["op"])
        if "updates" in arrow:
            arrow["updates"] = _Flow(arrow["updates"])
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


# ---------------------------------------------------------------------------------------------
# 1-2: bytes -> text -> nodes


def _decode(raw: bytes, filename: str) -> str:
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

    def __init__(self, stream: str):
        super().__init__(stream)
        self.anchor_names: dict[int, str] = {}

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        node = super().compose_node(parent, index)
        anchor = getattr(event, "anchor", None)
        if anchor is not None and not isinstance(event, yaml.AliasEvent):
            self.anchor_names[id(node)] = anchor
        return node


def _compose(text: str, filename: str) -> tuple[Node | None, dict[int, str]]:
    loader = None
    try:
        loader = _Loader(text)  # the reader already refuses control characters here
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


def _child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_YAML) :] if tag.startswith(_YAML) else tag


_CONSTRUCTOR = yaml.constructor.SafeConstructor()  # for int/float/bool/null scalars only


class _Builder:
    """Builds plain data from a node tree, recording the (line, column) of every key and item."""

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
        if id(node) in self.active:  # located at the key or item that refers back (*anchor)
            line, column = self.positions.get(path, (node.start_mark.line + 1, node.start_mark.column + 1))
            raise GraphSpecError([(Location(self.filename, line, column, path), MSG_CYCLE.format(anchor=self.anchors.get(id(node), "?")))])
        expected = _YAML + ("map" if isinstance(node, MappingNode) else "seq")
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
        if node.tag in (_YAML + "str", _YAML + "timestamp"):
            return node.value  # dates stay text: no field of a graph holds a date
        return _CONSTRUCTOR.construct_object(node)

    def _sequence(self, node: SequenceNode, path: str) -> list:
        out = []
        for k, item in enumerate(node.value):
            sub = _child(path, k)
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
                self.issues.append((self._loc(key_node, _child(path, key)), msg))
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
        sub = _child(path, key)
        self.positions.setdefault(sub, (key_node.start_mark.line + 1, key_node.start_mark.column + 1))
        out[key] = self.build(value_node, sub)


def _locator(filename: str, positions: dict[str, tuple[int, int]]) -> Callable[[str], Location]:
    """``locate(path)``: file, line and column of the deepest prefix of ``path`` in the document."""

    def locate(path: str) -> Location:
        cut = path
        while cut not in positions and cut:
            cut = cut[: max(cut.rfind("."), cut.rfind("["), 0)]
        line, column = positions.get(cut, (None, None))
        return Location(filename, line, column, path)

    return locate


# ---------------------------------------------------------------------------------------------
# 4: pydantic errors -> located issues

_ALIAS_SWAP = {"from": "src", "to": "dst", "src": "from", "dst": "to"}


def _clean_loc(err: dict, data: Any) -> tuple[list, Any]:
    """YAML path tokens of a pydantic error and the value there; drops union/discriminator tags."""
    loc, inp, missing = err["loc"], err.get("input"), err["type"] == "missing"
    tokens: list = []
    cur = data
    for i, el in enumerate(loc):
        last = i == len(loc) - 1
        if cur is inp and not isinstance(inp, (int, float, str, bool)):
            if missing:  # the input is the mapping lacking the key: the key is the last element
                tokens.append(loc[-1])
            break
        if isinstance(cur, dict) and isinstance(el, str):
            key = el if el in cur else _ALIAS_SWAP.get(el)
            if key in cur:
                tokens.append(key)
                cur = cur[key]
                continue
        elif isinstance(cur, list) and isinstance(el, int) and 0 <= el < len(cur):
            tokens.append(el)
            cur = cur[el]
            continue
        if last and missing:
            tokens.append(el)
        # anything else is a union member or discriminator tag (e.g. 'normal', 'int'): dropped
    return tokens, cur


def _path_str(tokens: list) -> str:
    path = ""
    for t in tokens:
        path = _child(path, t)
    return path


def _kind_of(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "a boolean"
    for tp, word in ((dict, "a mapping"), (list, "a list"), (str, "a string"), (int, "an integer"), (float, "a number")):
        if isinstance(value, tp):
            return word
    return type(value).__name__


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _found(value: Any) -> str:
    return "nothing (the value is empty or null)" if value is None else f"{_short(value)} ({_kind_of(value)})"


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _unwrap(tp: Any, value: Any) -> Any:
    """Strip Annotated/Optional; of a union of models pick the one whose ``kind`` matches ``value``
    (all of them, as a list, when none does)."""
    while typing.get_origin(tp) in (typing.Annotated, Union, types.UnionType):
        if typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        members = [m for m in typing.get_args(tp) if m is not type(None)]
        models = [m for m in members if _is_model(m)]
        if len(models) > 1:
            kind = value.get("kind") if isinstance(value, dict) else None
            match = [m for m in models if kind in typing.get_args(m.model_fields["kind"].annotation)]
            return match[0] if match else models
        tp = members[0]
    return tp


def _model_at(tokens: list, data: Any) -> Any:
    """The model class (or list of candidate classes) describing the mapping at ``tokens``."""
    tp, cur = GraphSpec, data
    for t in tokens:
        tp = _unwrap(tp, cur)
        if isinstance(tp, list):
            return None
        if _is_model(tp):
            field = next((f for n, f in tp.model_fields.items() if t in (n, f.alias)), None)
            if field is None:
                return None
            tp = field.annotation
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        elif typing.get_origin(tp) in (tuple, list):
            tp = typing.get_args(tp)[0]
        else:
            return None
        cur = cur.get(t) if isinstance(cur, dict) else cur[t] if isinstance(cur, list) and isinstance(t, int) and t < len(cur) else None
    return _unwrap(tp, cur)


def _keys_of(model: Any) -> list[str]:
    models = model if isinstance(model, list) else [model]
    keys: list[str] = []
    for m in models:
        if _is_model(m):
            for name, f in m.model_fields.items():
                key = f.alias or name
                if key not in keys:
                    keys.append(key)
    return keys


def _help(tokens: list) -> str:
    key = next((t for t in reversed(tokens) if isinstance(t, str)), None)
    return f" {key!r} should be {FIELD_HELP[key]}." if key in FIELD_HELP else ""


def _describe(err: dict, tokens: list, value: Any, data: Any) -> str:
    kind, msg, ctx = err["type"], err["msg"], err.get("ctx") or {}
    key = tokens[-1] if tokens else ""
    if kind == "missing":
        hint = FIELD_HELP.get(key, "a value")
        return f"required key {key!r} is missing; add '{key}: ...' with {hint}"
    if kind == "extra_forbidden":
        model = _model_at(tokens[:-1], data)
        valid = _keys_of(model)
        names = valid + [n for m in (model if isinstance(model, list) else [model]) if isinstance(m, type) for n in m.model_fields if n not in valid]
        close = difflib.get_close_matches(str(key), names, n=1)
        what = _MODEL_WORDS.get(getattr(model, "__name__", ""), "this mapping")
        fix = f"Did you mean {close[0]!r}? " if close else ""
        return f"unknown key {key!r} in {what}. {fix}Valid keys: {', '.join(valid)}; remove it or fix its spelling"
    if kind == "literal_error":
        choices = [c.strip().strip("'") for c in ctx.get("expected", "").replace(" or ", ", ").split(",") if c.strip()]
        close = difflib.get_close_matches(str(value), choices, n=1)
        fix = f" Did you mean {close[0]!r}?" if close else f" Use one of {', '.join(repr(c) for c in choices)}."
        return f"expected one of {ctx.get('expected')}, got {_found(value)}.{fix}"
    if kind == "union_tag_invalid":
        tags = [t.strip().strip("'") for t in ctx.get("expected_tags", "").split(",")]
        close = difflib.get_close_matches(str(ctx.get("tag")), tags, n=1)
        fix = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {key or 'value'} kind {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}.{fix}"
    if kind == "union_tag_not_found":
        return f"{key or 'this mapping'} needs a key {ctx.get('discriminator', 'kind')} saying which kind it is, got {_found(value)}; add e.g. 'kind: normal'"
    if kind == "value_error":  # the spec's own validators, whose messages say what is needed
        return msg.removeprefix("Value error, ")
    if kind in ("too_short", "too_long"):
        bound = f"at least {ctx.get('min_length')}" if kind == "too_short" else f"at most {ctx.get('max_length')}"
        return f"expected {bound} items, got {_found(value)} with {ctx.get('actual_length')} items.{_help(tokens)}"
    if kind in _TYPE_WORDS:
        want = _TYPE_WORDS[kind]
        if kind.startswith("model") or kind == "dict_type":
            keys = _keys_of(_model_at(tokens, data))
            want += f" with keys {', '.join(keys)}" if keys else ""
        quote = ""
        if kind == "string_type" and isinstance(value, bool):
            quote = " Quote it: unquoted yes/no/on/off/true/false/null are not strings in YAML."
        return f"expected {want}, got {_found(value)}.{_help(tokens) or ' Change the value.'}{quote}"
    if msg.startswith("Input should be "):  # bounds: greater_than_equal, ...
        return f"expected a value {msg.removeprefix('Input should be ')}, got {_found(value)}.{_help(tokens) or ' Change the value.'}"
    return f"{msg}, got {_found(value)}.{_help(tokens)}"


def _validation_issues(exc: ValidationError, data: dict, locate: Callable[[str], Location]) -> list[tuple[Location, str]]:
    by_path: dict[str, list[tuple[dict, list, Any]]] = {}
    for err in exc.errors():
        tokens, value = _clean_loc(err, data)  # value: as written in the document
        by_path.setdefault(_path_str(tokens), []).append((err, tokens, value))
    issues = []
    for path, errs in by_path.items():
        if len(errs) > 1 and all(e["type"] in _TYPE_WORDS for e, _, _ in errs):  # a union of scalar types
            wants = list(dict.fromkeys(_TYPE_WORDS[e["type"]] for e, _, _ in errs))
            _, tokens, value = errs[0]
            issues.append((locate(path), f"expected {', '.join(wants[:-1])} or {wants[-1]}, got {_found(value)}.{_help(tokens) or ' Change the value.'}"))
            continue
        for err, tokens, value in errs:
            issues.append((locate(path), _describe(err, tokens, value, data)))
    return issues


# ---------------------------------------------------------------------------------------------
# dump


class _Dumper(yaml.SafeDumper):
    """Block style for the structure; short lists and mappings of scalars (shapes, fields, op args,
    edges) in flow style, one per line; no aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    def flat(x: Any) -> bool:
        return not isinstance(x, (dict, list)) or (isinstance(x, list) and all(not isinstance(y, (dict, list)) for y in x))

    return dumper.represent_sequence(_YAML + "seq", data, flow_style=all(flat(x) for x in data))


class _Flow(dict):
    """A mapping written on one line: a field, an op, an init, an updates table."""


def _represent_dict(dumper: yaml.SafeDumper, data: dict) -> yaml.Node:
    return dumper.represent_mapping(_YAML + "map", data.items(), flow_style=isinstance(data, _Flow))


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(_Flow, _represent_dict)
