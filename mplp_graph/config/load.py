"""load_graph(path) -> GraphSpec: YAML text -> located data -> pydantic spec -> verify.

The pipeline, one step per function, each step reporting ``file:line:col yaml.path: message``:

1. ``decode_text``: bytes -> text (UTF-8 only, at most :data:`MAX_BYTES`).
2. ``compose_nodes``: text -> YAML node tree (``yaml.compose`` on a SafeLoader subclass), so syntax
   errors carry their line and column and no Python object is ever constructed.
3. ``NodeBuilder``: node tree -> plain data (dicts, lists, scalars) plus the position of every mapping
   key and sequence item, keyed by YAML path (``arrows[3].map``, ``groups.W0.state.x.shape[0]``).
   It refuses duplicate keys, non-plain tags and cyclic aliases.
4. ``validation_issues``: ``GraphSpec.model_validate(data)``; every pydantic error becomes one
   located issue saying what was expected, what was found, and how to fix it.
5. ``verify(spec, locate=...)``: the IR rules (mplp_graph/ir/verify.py), located the same way.

``dump_graph`` writes the YAML form of a spec (aliases, defaults left out), so that
``loads_graph(dump_graph(spec)) == spec``.
"""

from __future__ import annotations

import os
from typing import Any

import yaml
from pydantic import ValidationError

from mplp_graph.errors import GraphSpecError, Location
from mplp_graph.ir.spec import GraphSpec
from mplp_graph.ir.verify import verify
from mplp_graph.config.issues import kind_of, locator, validation_issues
from mplp_graph.config.yaml_nodes import MAX_BYTES, MSG_TOO_BIG, MSG_TOP, YAML_TAG, NodeBuilder, compose_nodes, decode_text


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
        text = decode_text(text, filename)
    elif len(text) > MAX_BYTES:
        raise GraphSpecError(MSG_TOO_BIG.format(size=len(text), limit=MAX_BYTES), Location(file=filename))
    spec, locate = validate_located(text, filename, GraphSpec)
    return verify(spec, locate=locate)


def validate_located(text: str, filename: str, model: Any, error: type[GraphSpecError] = GraphSpecError, top: str = MSG_TOP) -> tuple[Any, Any]:
    """Steps 2-4 for any pydantic ``model``: ``(model instance, locate)``, where ``locate(path)``
    gives the file, line and column of a YAML path; raises ``error`` with located issues.
    ``top``: the message for a document that is not a mapping (``{found}`` in it)."""
    node, anchors = compose_nodes(text, filename)
    builder = NodeBuilder(filename, anchors)
    data = builder.build(node, "") if node is not None else None
    if builder.issues:
        raise error(builder.issues)
    if not isinstance(data, dict):
        found = "an empty document" if data is None else kind_of(data)
        raise error(top.format(found=found), Location(filename, 1, 1))
    locate = locator(filename, builder.positions)
    try:
        return model.model_validate(data), locate
    except ValidationError as e:
        raise error(validation_issues(e, data, locate, model)) from None


def read_value(text: str, source: str = "<value>") -> Any:
    """One YAML value read by the rules of graph and config files (``1e-3`` a number, an
    overflowing literal refused, no tags), e.g. the ``VALUE`` of a ``--set KEY=VALUE`` option.
    Raises :class:`GraphSpecError` naming ``source``."""
    node, anchors = compose_nodes(text, source)
    if node is None:
        return None
    builder = NodeBuilder(source, anchors)
    value = builder.build(node, "")
    if builder.issues:
        raise GraphSpecError(builder.issues)
    return value


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


class _Dumper(yaml.SafeDumper):
    """Block style for the structure; short lists and mappings of scalars (shapes, fields, op args,
    edges) in flow style, one per line; no aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    def flat(x: Any) -> bool:
        return not isinstance(x, (dict, list)) or (isinstance(x, list) and all(not isinstance(y, (dict, list)) for y in x))

    return dumper.represent_sequence(YAML_TAG + "seq", data, flow_style=all(flat(x) for x in data))


class _Flow(dict):
    """A mapping written on one line: a field, an op, an init, an updates table."""


def _represent_dict(dumper: yaml.SafeDumper, data: dict) -> yaml.Node:
    return dumper.represent_mapping(YAML_TAG + "map", data.items(), flow_style=isinstance(data, _Flow))


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(_Flow, _represent_dict)

