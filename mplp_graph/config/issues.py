"""Step 4 of loading a graph file: pydantic validation errors -> located issues that say what was
expected, what was found and how to fix it (see :mod:`mplp_graph.config.load`)."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Callable, Union

from pydantic import BaseModel, ValidationError

from mplp_graph.config.yaml_nodes import child_path
from mplp_graph.errors import Location
from mplp_graph.ir.spec import GraphSpec


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
    # experiment configs (mplp_graph.meta.config)
    "ExperimentConfig": "the experiment config",
    "GraphConfig": "the 'graph' section",
    "TaskConfig": "the 'task' section",
    "MetaConfig": "the 'meta' section",
    "EvalConfig": "the 'eval' section",
}


# ---------------------------------------------------------------------------------------------
# public API


def locator(filename: str, positions: dict[str, tuple[int, int]]) -> Callable[[str], Location]:
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
        path = child_path(path, t)
    return path


def kind_of(value: Any) -> str:
    """What a YAML value is, in words (``a mapping``, ``an integer``...)."""
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
    return "nothing (the value is empty or null)" if value is None else f"{_short(value)} ({kind_of(value)})"


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


def _model_at(tokens: list, data: Any, root: Any = GraphSpec) -> Any:
    """The model class (or list of candidate classes) describing the mapping at ``tokens`` of a
    document validated as ``root``."""
    tp, cur = root, data
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


def _describe(err: dict, tokens: list, value: Any, data: Any, root: Any = GraphSpec) -> str:
    kind, msg, ctx = err["type"], err["msg"], err.get("ctx") or {}
    key = tokens[-1] if tokens else ""
    if kind == "missing":
        hint = FIELD_HELP.get(key, "a value")
        return f"required key {key!r} is missing; add '{key}: ...' with {hint}"
    if kind == "extra_forbidden":
        model = _model_at(tokens[:-1], data, root)
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
    if kind == "finite_number":
        return f"expected a finite number, got {_found(value)}; .nan and .inf are not accepted here.{_help(tokens) or ' Change the value.'}"
    if kind in ("too_short", "too_long"):
        bound = f"at least {ctx.get('min_length')}" if kind == "too_short" else f"at most {ctx.get('max_length')}"
        return f"expected {bound} items, got {_found(value)} with {ctx.get('actual_length')} items.{_help(tokens)}"
    if kind in _TYPE_WORDS:
        want = _TYPE_WORDS[kind]
        if kind.startswith("model") or kind == "dict_type":
            keys = _keys_of(_model_at(tokens, data, root))
            want += f" with keys {', '.join(keys)}" if keys else ""
        quote = ""
        if kind == "string_type" and isinstance(value, bool):
            quote = " Quote it: unquoted yes/no/on/off/true/false/null are not strings in YAML."
        return f"expected {want}, got {_found(value)}.{_help(tokens) or ' Change the value.'}{quote}"
    if msg.startswith("Input should be "):  # bounds: greater_than_equal, ...
        return f"expected a value {msg.removeprefix('Input should be ')}, got {_found(value)}.{_help(tokens) or ' Change the value.'}"
    return f"{msg}, got {_found(value)}.{_help(tokens)}"


def validation_issues(exc: ValidationError, data: dict, locate: Callable[[str], Location], root: Any = GraphSpec) -> list[tuple[Location, str]]:
    """One located issue per pydantic error of ``root.model_validate(data)`` (``root``: the model
    the document was validated as: a graph, or an experiment config)."""
    by_path: dict[str, list[tuple[dict, list, Any]]] = {}
    for err in exc.errors():
        tokens, value = _clean_loc(err, data)  # value: as written in the document
        by_path.setdefault(_path_str(tokens), []).append((err, tokens, value))
    issues = []
    for path, errs in by_path.items():
        if len(errs) > 1 and all(e["type"] in _TYPE_WORDS or e["type"] == "literal_error" for e, _, _ in errs):  # a union of scalars
            wants = list(dict.fromkeys(
                _TYPE_WORDS[e["type"]] if e["type"] in _TYPE_WORDS else f"one of {(e.get('ctx') or {}).get('expected')}" for e, _, _ in errs
            ))
            _, tokens, value = errs[0]
            issues.append((locate(path), f"expected {', '.join(wants[:-1])} or {wants[-1]}, got {_found(value)}.{_help(tokens) or ' Change the value.'}"))
            continue
        for err, tokens, value in errs:
            issues.append((locate(path), _describe(err, tokens, value, data, root)))
    return issues


# ---------------------------------------------------------------------------------------------
# dump


