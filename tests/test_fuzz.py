"""Property-based fuzzing of the YAML front end (``loads_graph`` / ``load_graph``).

Whatever the input (valid graphs mutated at the data level, at the text level and at the byte
level; deep nesting, alias chains and bombs, cyclic anchors, tags), loading either returns a
spec that compiles and survives ``dump_graph`` -> ``loads_graph``, or raises
:class:`GraphSpecError` whose every issue is located (file, line) and explained. Any other
exception, or a load that takes longer than :data:`LIMIT_S`, fails the test.

CI runs a bounded number of examples per test (derandomized, so reruns are reproducible). A
longer, random run::

    MPLP_FUZZ_EXAMPLES=20000 .venv/bin/pytest tests/test_fuzz.py -s

collects the unexpected exceptions instead of stopping at the first, prints how many inputs
each test tried and how many unexpected exceptions it met, and fails if there were any.
"""

from __future__ import annotations

import copy
import os
import signal
import traceback
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from random_graphs import random_graph

import mplp_graph as mg
from mplp_graph.config import yaml_nodes
from mplp_graph.config.load import dump_graph, loads_graph
from mplp_graph.config.yaml_nodes import MAX_DEPTH

ROOT = Path(__file__).resolve().parent.parent
FILE = "fuzz.yaml"
LONG = int(os.environ.get("MPLP_FUZZ_EXAMPLES", "0"))  # > 0: the long, collecting run
SMALL_MAX_NODES = 20_000  # test_fuzz_nesting_aliases_tags: alias bombs stop here
LIMIT_S = 20.0  # one load (and, if accepted, compile + round trip); a normal one takes ~30 ms

FUZZ = settings(
    max_examples=LONG or 100,
    deadline=None,
    derandomize=not LONG,
    database=None,  # no .hypothesis folder in the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


# ---------------------------------------------------------------------------------------------
# seeds: the graphs shipped in graphs/ and a few random graphs (edge lists, constant axes,
# explicit stages, shared keys)

SEED_TEXTS = [p.read_text() for p in sorted((ROOT / "graphs").glob("*.yaml"))]
SEED_TEXTS += [dump_graph(random_graph(seed)) for seed in range(4)]
SEED_DOCS = [yaml.safe_load(t) for t in SEED_TEXTS]

KEYS = ["name", "description", "groups", "kind", "shape", "state", "dtype", "batched", "init", "constant_along",
        "arrows", "from", "to", "phase", "op", "args", "inputs", "outputs", "map", "edges", "aggregate", "into",
        "updates", "share", "schedule", "phases", "step", "std", "mean", "value", "low", "high", "msg", "hidden",
        "carry", "param", "standardize", "lr", "<<"]
WORDS = ["identity", "forward", "backward", "sum", "mean", "max", "zeros", "normal", "float32", "float64", "int32",
         "bool", "mul", "add", "sgd", "mplp_gru", "mplp_mlp", "dense", "x.value", "loss.target", "W0.w", "nope.nope",
         "", " ", "~", "null", "yes", "on", "0x1F", "1e999", ".nan", "-.inf", "2001-12-14", "<<", "&a", "*a"]
MAPS = ["i -> i j", "i j -> j", "ij->ji", "i -> k", "-> i", "i ->", "i i -> i", "i j -> i i", "->", "i -> -> j",
        "identity", "a0 -> a0", "1 -> 1", "i j k l m n o p -> i", "é -> é", "i\t->\tj", " i -> j "]
EXTREME_INTS = [0, -1, -2**31, 2**31 - 1, 2**31, 2**32 + 1, 2**63 - 1, 2**63, 2**64, -2**63 - 1, 10**30, 10**400]
SHAPES = [[], [0], [-3], [1] * 40, [2] * 40, [10**9, 10**9], [2**40], [2**31], [46341, 46341], [10**30],
          [65536, 32768], [4, 0, 4], [True, 2], [1.5], ["4"], [None]]


def small_values(depth: int = 2) -> st.SearchStrategy:
    scalars = st.one_of(
        st.none(), st.booleans(),
        st.integers(min_value=-10**6, max_value=10**6), st.sampled_from(EXTREME_INTS),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=12), st.sampled_from(WORDS + KEYS + MAPS),
    )
    if depth == 0:
        return scalars
    inner = small_values(depth - 1)
    return st.one_of(
        scalars,
        st.lists(inner, max_size=4),
        st.sampled_from(SHAPES),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6), st.integers(-3, 3)), inner, max_size=3),
    )


# ---------------------------------------------------------------------------------------------
# data-level mutations


def node_paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys and indices) into ``doc``, the root excluded."""
    out = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        out.append(prefix + (k,))
        out += node_paths(v, prefix + (k,))
    return out


def get_at(doc: Any, path: tuple) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def names_in(doc: Any) -> list[str]:
    """Strings used in the document (group, field, arrow and phase names; refs)."""
    out = []
    for p in node_paths(doc):
        if isinstance(p[-1], str):
            out.append(p[-1])
        v = get_at(doc, p)
        if isinstance(v, str) and len(v) < 40:
            out.append(v)
    return sorted(set(out)) or ["x"]


def typed_paths(doc: Any, action: str) -> list[tuple]:
    """Paths where ``action`` keeps the document's types (so that the schema accepts it and the
    verifier and compiler see the change); all paths for the other actions."""
    paths = node_paths(doc)
    if action == "number":
        return [p for p in paths if type(get_at(doc, p)) is int]
    if action == "shape":
        return [p for p in paths if p[-1] in ("shape", "constant_along", "edges") or (len(p) > 1 and p[-2] == "edges")]
    if action in ("rename", "near"):
        return [p for p in paths if isinstance(get_at(doc, p), str) or isinstance(p[-1], str)]
    if action == "map":
        return [p for p in paths if p[-1] == "map"] or paths
    return paths


def depth(doc: Any) -> int:
    items = doc.values() if isinstance(doc, dict) else doc if isinstance(doc, list) else None
    return 0 if items is None else 1 + max((depth(v) for v in items), default=0)


MAX_DOC_DEPTH = 40  # copying a node into its own subtree doubles the depth; deeper ones: test_deep_nesting_*


@st.composite
def mutated_documents(draw) -> Any:
    doc = copy.deepcopy(draw(st.sampled_from(SEED_DOCS)))
    names = names_in(doc)
    for _ in range(draw(st.integers(1, 6))):
        if depth(doc) > MAX_DOC_DEPTH:
            break
        action = draw(st.sampled_from(
            ["replace", "delete", "extra", "copy", "rename", "number", "shape", "map", "duplicate", "wrap", "near"]
        ))
        paths = typed_paths(doc, action)
        if not paths:
            continue
        path = draw(st.sampled_from(paths))
        parent, key = get_at(doc, path[:-1]), path[-1]
        value = parent[key]
        if action == "replace":
            parent[key] = copy.deepcopy(draw(small_values()))
        elif action == "delete":
            del parent[key]
        elif action == "extra":
            target = value if isinstance(value, dict) else parent if isinstance(parent, dict) else None
            if target is not None:
                target[draw(st.one_of(st.sampled_from(KEYS + names), st.text(max_size=8)))] = copy.deepcopy(draw(small_values(1)))
        elif action == "copy":  # another part of the document in the wrong place
            parent[key] = copy.deepcopy(get_at(doc, draw(st.sampled_from(paths))))
        elif action == "rename":  # a name from elsewhere: dangling or confused references
            if isinstance(parent, dict) and draw(st.booleans()):
                new_key = draw(st.sampled_from(names))
                parent[new_key] = parent.pop(key)
            else:
                parent[key] = draw(st.sampled_from(names))
        elif action == "number":
            parent[key] = draw(st.one_of(st.sampled_from(EXTREME_INTS), st.integers(-3, 70)))
        elif action == "shape" and isinstance(value, list) and value and draw(st.booleans()):
            value[draw(st.integers(0, len(value) - 1))] = draw(st.one_of(st.sampled_from(EXTREME_INTS), st.integers(-3, 70)))
        elif action == "shape":
            parent[key] = list(draw(st.sampled_from(SHAPES)))
        elif action == "map":
            parent[key] = draw(st.sampled_from(MAPS))
        elif action == "duplicate" and isinstance(value, list) and value:
            value.insert(draw(st.integers(0, len(value))), copy.deepcopy(draw(st.sampled_from(value))))
        elif action == "wrap":
            parent[key] = [value] if draw(st.booleans()) else {draw(st.sampled_from(KEYS)): value}
        elif action == "near" and isinstance(value, str):  # a typo
            parent[key] = value + draw(st.sampled_from(["x", "_", " ", ".", "0"])) if draw(st.booleans()) else value[:-1]
    return doc


# ---------------------------------------------------------------------------------------------
# strict-input mutations: a value that must be refused in a slot that holds a number, or a
# number / boolean in an op argument that holds a word. None of them may be accepted.

BAD_NUMBERS = [True, False, float("nan"), float("inf"), float("-inf"), "3", "0.1", "1e999", [1], {"a": 1}]
WORD_ARGS = ("standardize", "matmul", "first_layer", "activation")


def number_paths(doc: Any) -> list[tuple]:
    """Paths of the numbers (not booleans) in ``doc``: shapes, axes, edges, inits, op arguments."""
    return [p for p in node_paths(doc) if type(get_at(doc, p)) in (int, float)]


def word_arg_paths(doc: Any) -> list[tuple]:
    return [p for p in node_paths(doc) if len(p) > 2 and p[-2] == "args" and p[-1] in WORD_ARGS]


STRICT_SEEDS = [d for d in SEED_DOCS if number_paths(d)]


@st.composite
def strictly_bad_documents(draw) -> Any:
    doc = copy.deepcopy(draw(st.sampled_from(STRICT_SEEDS)))
    paths = word_arg_paths(doc) if draw(st.booleans()) else []
    if paths:  # a type-confused op argument: a number, a boolean or a misspelt word where a word belongs
        path = draw(st.sampled_from(paths))
        bad = draw(st.one_of(st.sampled_from([1, 0.5, True, float("nan")]), st.sampled_from(["tanhh", "froze", "bf16", "Split", ""])))
    else:
        path = draw(st.sampled_from(number_paths(doc)))
        bad = draw(st.sampled_from(BAD_NUMBERS))
    parent = get_at(doc, path[:-1])
    parent[path[-1]] = copy.deepcopy(bad)
    return doc


# ---------------------------------------------------------------------------------------------
# text- and byte-level mutations

TOKENS = [":", ": ", "-", "- ", "[", "]", "{", "}", ",", "&a ", "*a", "!", "!!", "|", ">", "'", '"', "#", "\t", "\n",
          "  ", "%YAML 1.1\n", "---\n", "...\n", "? ", "<<: ", "@", "`", "\\", "\x00", "\x85", "\u2028", "\ufeff",
          "\ud800", "é", "😀", "\r", "\r\n", "0x", "1e", "~", "null", ".inf", "-"]


@st.composite
def mutated_texts(draw) -> str:
    text = draw(st.one_of(st.sampled_from(SEED_TEXTS), mutated_documents().map(lambda d: yaml.safe_dump(d, sort_keys=False))))
    for _ in range(draw(st.integers(1, 5))):
        n = len(text)
        at = draw(st.integers(0, n))
        action = draw(st.sampled_from(["insert", "delete", "dup_line", "indent", "truncate", "swap"]))
        if action == "insert":
            text = text[:at] + draw(st.one_of(st.sampled_from(TOKENS), st.text(max_size=4))) + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 20)):]
        elif action == "truncate":
            text = text[:at]
        else:
            lines = text.split("\n")
            k = draw(st.integers(0, len(lines) - 1))
            if action == "dup_line":
                lines.insert(k, lines[k])
            elif action == "indent":
                lines[k] = draw(st.sampled_from(["", " ", "  ", "   ", "\t", "- "])) + lines[k].lstrip(" ")
            else:
                j = draw(st.integers(0, len(lines) - 1))
                lines[k], lines[j] = lines[j], lines[k]
            text = "\n".join(lines)
    return text


@st.composite
def mutated_bytes(draw) -> bytes:
    how = draw(st.sampled_from(["random", "flip", "encoding", "bom"]))
    if how == "random":
        return draw(st.binary(max_size=300))
    raw = draw(st.sampled_from(SEED_TEXTS)).encode()
    if how == "flip":
        raw = bytearray(raw)
        for _ in range(draw(st.integers(1, 4))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        return bytes(raw)
    if how == "encoding":
        return draw(st.sampled_from(SEED_TEXTS)).encode(draw(st.sampled_from(["utf-16", "utf-32", "latin-1", "cp1252"])), "replace")
    return draw(st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf\xef\xbb\xbf"])) + raw


# ---------------------------------------------------------------------------------------------
# nesting, aliases, anchors and tags


def nested(depth: int, style: str) -> str:
    if style == "flow_seq":
        return "[" * depth + "1" + "]" * depth
    if style == "flow_map":
        return "{a: " * depth + "1" + "}" * depth
    if style == "block":
        return "".join("\n" + "  " * (k + 1) + "- " for k in range(depth)) + "1"
    if style == "alias_chain":  # each anchor wraps the previous one: deep only after expansion
        lines = ["a0: &a0 [1]"] + [f"a{k}: &a{k} [*a{k - 1}]" for k in range(1, depth)]
        return "\n" + "\n".join("  " + ln for ln in lines)
    raise ValueError(style)


@st.composite
def anchor_documents(draw) -> str:
    kind = draw(st.sampled_from(["nested", "bomb", "cycle", "tag", "merge"]))
    base = draw(st.sampled_from(SEED_TEXTS))
    if kind == "nested":
        depth = draw(st.one_of(st.integers(1, 20), st.integers(MAX_DEPTH - 3, MAX_DEPTH + 3), st.integers(100, 3000)))
        style = draw(st.sampled_from(["flow_seq", "flow_map", "block", "alias_chain"]))
        key = draw(st.sampled_from(["description", "groups", "arrows", "extra", "schedule"]))
        return f"name: deep\n{key}: {nested(depth, style)}\n" + (base if draw(st.booleans()) else "")
    if kind == "bomb":
        width, levels = draw(st.integers(2, 12)), draw(st.integers(1, 10))
        refs = lambda k: ", ".join([f"*a{k - 1}"] * width)
        lines = [f"  a0: &a0 [{', '.join(['x'] * width)}]"] + [f"  a{k}: &a{k} [{refs(k)}]" for k in range(1, levels)]
        return "name: bomb\ngroups:\n" + "\n".join(lines) + "\n"
    if kind == "cycle":
        return draw(st.sampled_from([
            "name: c\ngroups: &g [*g]\n",
            "name: c\ngroups: &g {x: *g}\n",
            "name: c\ngroups: &g {<<: *g}\n",
            "name: c\ngroups: &g {x: [{y: *g}]}\n",
            "name: c\ngroups: &g {x: &h [*h, *g]}\n",
            "name: c\ngroups: {x: &g {<<: [*g]}}\n",
            "name: c\ngroups: *nowhere\n",
            "name: c\ngroups: &g\n",
            "&top {name: c, groups: *top}\n",
        ]))
    if kind == "merge":
        src = draw(st.sampled_from(["{a: 1}", "[1, 2]", "1", "[{a: 1}, 2]", "null", "{<<: {b: 2}}"]))
        return f"name: m\nbase: &b {src}\ngroups: {{<<: *b, x: {{kind: input}}}}\n"
    # a tag in front of one value of a valid document
    tag = draw(st.sampled_from([
        "!!python/object:os.system", "!!python/object/apply:os.system", "!!python/name:os.system",
        "!!python/object/new:type", "!!python/module:os", "!<tag:yaml.org,2002:python/object/apply:os.system>",
        "!!binary", "!!set", "!!omap", "!!pairs", "!!timestamp", "!!str", "!!int", "!!float", "!!bool", "!!null",
        "!!map", "!!seq", "!custom", "!", "!!merge", "!!value",
    ]))
    lines = base.split("\n")
    candidates = [k for k, ln in enumerate(lines) if ": " in ln and not ln.lstrip().startswith("#")]
    k = draw(st.sampled_from(candidates))
    head, _, tail = lines[k].partition(": ")
    lines[k] = f"{head}: {tag} {tail}"
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the property


class LoadTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float):
    def expire(signum, frame):
        raise LoadTimeout(f"loading took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


COUNTS: Counter = Counter()
UNEXPECTED: list[tuple[str, str, str]] = []  # (test, exception, input), long run only


def check_located(err: mg.GraphSpecError) -> None:
    assert err.issues, "a GraphSpecError without issues"
    for loc, msg in err.issues:
        assert isinstance(msg, str) and msg.strip(), f"empty message at {loc}"
        assert loc.file == FILE, f"issue without the file name: {loc}: {msg}"
        too_big = "more than the limit" in msg and loc.line is None
        assert loc.line is not None or too_big, f"issue without a line: {loc}: {msg}"
    assert str(err)


def outcome(doc: str | bytes) -> str:
    """'refused' or 'accepted'; raises (or, in the long run, records) anything else."""
    with time_limit(LIMIT_S):
        try:
            spec = loads_graph(doc, filename=FILE)
        except mg.GraphSpecError as err:
            check_located(err)
            return "refused"
        # accepted: it compiles (no allocation: lowering happens when traced) and round-trips
        mg.compile_graph(spec)
        assert loads_graph(dump_graph(spec), filename=FILE) == spec
        return "accepted"


def run_case(test: str, doc: str | bytes) -> None:
    try:
        result = outcome(doc)
    except Exception as e:  # the property: nothing else is ever raised
        if not LONG:
            raise
        result = "unexpected"
        frame = traceback.extract_tb(e.__traceback__)[-1]
        where = f"{frame.filename}:{frame.lineno} in {frame.name}"
        UNEXPECTED.append((test, f"{''.join(traceback.format_exception_only(e)).strip()} ({where})", repr(doc)[:2000]))
    COUNTS[test, result] += 1


@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    if LONG:
        tests = sorted({t for t, _ in COUNTS})
        for t in tests:
            n = sum(v for (tt, _), v in COUNTS.items() if tt == t)
            parts = ", ".join(f"{r} {COUNTS[t, r]}" for r in ("accepted", "refused", "unexpected"))
            print(f"\n{t}: {n} inputs ({parts})")
        for test, exc, doc in UNEXPECTED[:20]:
            print(f"\nUNEXPECTED in {test}: {exc}\n  input: {doc[:400]}")
        print(f"\ntotal: {sum(COUNTS.values())} inputs, {len(UNEXPECTED)} unexpected exceptions")


# ---------------------------------------------------------------------------------------------
# what the fuzzer found, and the limits it relies on, as plain regression tests

SKIP = (ROOT / "graphs" / "skip_mlp.yaml").read_text()


def refusal(text: str) -> mg.GraphSpecError:
    with pytest.raises(mg.GraphSpecError) as info:
        loads_graph(text, filename=FILE)
    check_located(info.value)
    return info.value


def test_field_too_large_is_refused_with_its_size_and_the_limit():
    err = refusal(SKIP.replace("shape: [4, 6]", "shape: [4000000, 6000]", 1))
    (loc, msg), = [(loc, msg) for loc, msg in err.issues if loc.path == "groups.W0.state.w"]
    assert loc.line == 29
    assert "field W0.w holds 24,000,000,000 elements per example" in msg and "group shape [4000000, 6000]" in msg
    assert "more than the limit of 2,147,483,647 elements per field" in msg


def test_state_too_large_in_total_is_refused_before_allocating():
    # three fields of 1.5e9 float32 each: under the per-field limit, 16.8 GiB together
    err = refusal(SKIP.replace("shape: [4, 6]", "shape: [40000, 37500]", 1))
    (msg,) = [msg for loc, msg in err.issues if loc.path == "groups"]
    assert "the graph's state needs 16.8 GiB (18,000,000," in msg and "more than the limit of 16.0 GiB" in msg
    assert "the largest fields: W0." in msg


def test_absurd_sizes_and_edge_indices_are_refused():
    """Found by the fuzzer: an edge index beyond int64 raised OverflowError; a size of 10**400
    overflowed a float in the message."""
    text = dump_graph(random_graph(0))
    doc = yaml.safe_load(text)
    arrow = next(a for a in doc["arrows"] if a.get("edges"))
    arrow["edges"][0] = [10**30, 0]
    err = refusal(yaml.safe_dump(doc, sort_keys=False))
    assert any("source agent 1000000000000000000000000000000 is out of range" in msg for _, msg in err.issues)
    err = refusal(SKIP.replace("shape: [4, 6]", f"shape: [{10**400}, 6]", 1))
    assert any("holds about 10^400 elements per example" in msg for _, msg in err.issues)


def test_explicit_scalar_tag_on_a_wrong_value():
    """Found by the fuzzer: ``!!int abc`` raised ValueError from PyYAML's constructor."""
    for tag in ("!!int", "!!float", "!!bool"):
        err = refusal(SKIP.replace("name: skip_mlp", f"name: {tag} abc", 1))
        (loc, msg), = err.issues
        assert (loc.line, loc.path) == (13, "name") and f"'abc' is tagged {tag} but is not a value of that type" in msg


@pytest.mark.parametrize("style", ["flow_seq", "flow_map", "block", "alias_chain"])
def test_deep_nesting_is_refused_with_a_location(style):
    """Found by the fuzzer: a chain of 3000 aliases, each wrapping the previous, is shallow in the
    text but overflowed Python's stack when expanded (RecursionError)."""
    err = refusal(f"name: deep\ndescription: {nested(3000, style)}\n")
    (loc, msg), = err.issues
    assert f"nested more than {MAX_DEPTH} levels deep" in msg and loc.line >= 2


def test_seed_graphs_load():
    for text in SEED_TEXTS:
        assert outcome(text) == "accepted"


@FUZZ
@given(mutated_documents())
def test_fuzz_mutated_documents(doc):
    run_case("documents", yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


@FUZZ
@given(strictly_bad_documents())
def test_fuzz_strict_values_are_refused(doc):
    """Booleans, strings, non-finite and overflowing numbers in numeric slots, and type-confused
    op arguments: refused (with located issues), never coerced and accepted."""
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).replace("'1e999'", "1e999")
    before = COUNTS["strict", "accepted"]
    run_case("strict", text)
    if COUNTS["strict", "accepted"] > before:
        if not LONG:
            pytest.fail(f"accepted a value that must be refused:\n{text[:3000]}")
        UNEXPECTED.append(("strict", "accepted a value that must be refused", text[:2000]))


@FUZZ
@given(mutated_texts())
def test_fuzz_mutated_text(text):
    run_case("text", text)


@FUZZ
@given(mutated_bytes())
def test_fuzz_bytes(raw):
    run_case("bytes", raw)


@FUZZ
@given(anchor_documents())
def test_fuzz_nesting_aliases_tags(text):
    # a smaller expansion limit: the same code path, without building a million values per bomb
    saved, yaml_nodes.MAX_NODES = yaml_nodes.MAX_NODES, SMALL_MAX_NODES
    try:
        run_case("anchors", text)
    finally:
        yaml_nodes.MAX_NODES = saved


def test_long_run_found_nothing():
    """In the long run, the collected unexpected exceptions fail here (printed by the summary)."""
    assert not UNEXPECTED, f"{len(UNEXPECTED)} unexpected exceptions; first: {UNEXPECTED[0][:2]}"
