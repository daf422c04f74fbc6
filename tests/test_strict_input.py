"""Strict input: op arguments checked against their models, no silent coercion of scalars,
"did you mean" for names, one message per root cause, validated CLI options.

Each case is a small text mutation of test_load's BASE graph (x(2) -> W(2,3) -> b(3) -> loss,
backprop protocol), checked by file, line, YAML path and the words of its message.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_load import BASE, FILE, check, issue, line_of, load_error, mutate

import mplp_graph as mg
from mplp_graph.cli import main

ROOT = Path(__file__).resolve().parent.parent
SGD = "{name: sgd, args: {lr: 0.1}}"
SGD_LINE = "    op: {name: sgd, args: {lr: %s}}"


def sgd_with(args: str) -> str:
    return mutate(SGD, "{name: sgd, args: {%s}}" % args)


# ---------------------------------------------------------------------------------------------
# op arguments against their models


@pytest.mark.parametrize(
    "value, words",
    [
        ("fast", ["argument 'lr' takes number >= 0 (the learning rate)", "got 'fast' (a string)", "not a valid number"]),
        ("true", ["got True (a boolean)", "YAML reads unquoted true/false"]),
        (".nan", ["got nan", "not a finite number", "NaN and infinity are not valid here"]),
        ("-.inf", ["not a finite number"]),
        ("-0.5", ["got -0.5", "greater than or equal to 0"]),
        ("'0.1'", ["got '0.1' (a string)"]),
    ],
)
def test_op_argument_of_the_wrong_kind_is_located(value, words):
    text = sgd_with(f"lr: {value}")
    check(text, "arrows[5].op.args.lr", line_of(text, SGD_LINE % value), ["op 'sgd'", *words])


def test_op_argument_choices_and_names_suggest_the_closest():
    text = mutate("    op: l2_grad\n", "    op: {name: dense, args: {features: 1, activation: tanhh}}\n")
    check(text, "arrows[4].op.args.activation", line_of(text, "    op: {name: dense, args: {features: 1, activation: tanhh}}"),
          ["argument 'activation' takes linear | tanh", "Did you mean 'tanh'?"])
    text = sgd_with("lrr: 0.1")
    err = check(text, "arrows[5].op.args.lrr", line_of(text, SGD_LINE.replace("lr: %s", "lrr: 0.1")),
                ["op 'sgd' takes no argument 'lrr'", "Did you mean 'lr'?"])
    loc, msg = issue(err, "arrows[5].op.args")  # and lr is missing
    assert "needs argument 'lr' (number >= 0: the learning rate)" in msg


def test_learner_arguments_are_checked_before_shapes():
    """A learner with a float width used to fail inside its ``infer``; now the argument is named
    and no shape message follows from it (one root cause, one message)."""
    from mplp_graph.templates.mplp import mplp_feedforward

    spec = mplp_feedforward((2, 3), "relu", "l2")
    text = mg.dump_graph(spec)
    line = next(ln for ln in text.splitlines() if "hidden: 15" in ln)
    bad = text.replace(line, line.replace("hidden: 15", "hidden: 1.5"), 1)
    err = load_error(bad)
    assert len(err.issues) == 1, err
    (loc, msg), = err.issues
    assert loc.path.endswith("op.args.hidden") and "argument 'hidden' takes integer >= 0" in msg and "got 1.5 (a number)" in msg


def test_op_receives_its_arguments_with_defaults():
    spec = mg.loads_graph(mutate("    op: l2_grad\n", "    op: {name: dense, args: {features: 1}}\n"), filename=FILE)
    plan = next(p for p in mg.compile_graph(spec).plans if p.op.name == "dense")
    assert plan.args == {"features": 1, "activation": "linear"}


def test_ops_without_an_argument_model_still_register():
    """A user's op registered with names only gets a model of finite scalars."""
    op = mg.Op(name="test_strict_user_op", arity=1, infer=lambda s, a: {"message": s[0]},
               apply=lambda p, ins, a: {"message": ins[0] * a["k"]}, arg_names=("k",), required_args=("k",))
    assert op.arg_names == ("k",) and op.required_args == ("k",)
    assert op.check_args({"k": 2.0}) == {"k": 2.0}
    with pytest.raises(Exception):
        op.check_args({"k": float("nan")})


def test_op_table_in_the_docs_is_current():
    text = (ROOT / "docs" / "yaml.md").read_text()
    start = text.index("<!-- op table")
    body = text[text.index("\n", start) + 1 : text.index("<!-- end of op table -->")]
    assert body == mg.op_table(), "docs/yaml.md's op table is stale; regenerate it with `mplp-graph ops --markdown`"
    for name in mg.op_names():
        assert f"| `{name}` |" in body


def test_cli_ops_lists_ops_and_arguments(capsys):
    assert main(["ops", "sgd", "dense"]) == 0
    out = capsys.readouterr().out
    assert "sgd (2 inputs): message = p - lr * g" in out and "    lr: number >= 0, required; the learning rate" in out
    assert "    activation: linear | tanh, linear; applied to the output" in out
    assert main(["ops", "sgdd"]) == 2
    assert "unknown op 'sgdd'. Did you mean 'sgd'?" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# strict scalars


@pytest.mark.parametrize(
    "old, new, path, words",
    [
        ("shape: [2, 3]", "shape: [2, true]", "groups.W.shape[1]", ["expected an integer", "got True (a boolean)"]),
        ("shape: [2, 3]", "shape: [2, 3.0]", "groups.W.shape[1]", ["expected an integer", "got 3.0 (a number)"]),
        ("shape: [2, 3]", "shape: [2, '3']", "groups.W.shape[1]", ["expected an integer", "got '3' (a string)"]),
        ("      value: {batched: true}", "      value: {batched: 1}", "groups.x.state.value.batched", ["expected a boolean", "got 1 (an integer)"]),
        ("std: 0.05", "std: .nan", "groups.W.state.w.init.std", ["expected a finite number", ".nan and .inf are not accepted"]),
        ("std: 0.05", "std: .inf", "groups.W.state.w.init.std", ["expected a finite number"]),
        ("std: 0.05", "std: false", "groups.W.state.w.init.std", ["expected a number", "got False (a boolean)"]),
        ("std: 0.05", "std: 1e999", "groups.W.state.w.init.std", ["the number 1e999 is too large for a 64-bit float"]),
        ("std: 0.05", "std: -2.5e400", "groups.W.state.w.init.std", ["the number -2.5e400 is too large"]),
    ],
)
def test_no_silent_coercion_of_scalars(old, new, path, words):
    text = mutate(old, new)
    line = next(k + 1 for k, ln in enumerate(text.splitlines()) if new in ln)
    err = check(text, path, line, words)
    assert len(err.issues) == 1, err  # no cascade (a bool read as 1 used to give two shape errors)


def test_yaml_12_exponent_floats_are_numbers():
    spec = mg.loads_graph(sgd_with("lr: 1e-3"), filename=FILE)
    assert spec.arrow("b.sgd").op.args["lr"] == 0.001
    # quoted, it stays text, and text is not a learning rate
    text = sgd_with("lr: '1e-3'")
    check(text, "arrows[5].op.args.lr", line_of(text, SGD_LINE % "'1e-3'"), ["got '1e-3' (a string)"])


def test_specs_built_in_python_take_numpy_scalars():
    spec = mg.feedforward((np.int64(2), np.int32(3)), "relu", "l2", lr=np.float32(0.1))
    assert spec.groups["W0"].shape == (2, 3) and type(spec.groups["W0"].shape[0]) is int
    with pytest.raises(Exception, match="valid integer"):
        mg.GroupSpec(kind="x", shape=(np.True_,))


def test_experiment_configs_are_strict(tmp_path):
    from mplp_graph.errors import ConfigError
    from mplp_graph.meta.config import load_experiment_config

    path = tmp_path / "c.yaml"
    for body, words in [
        ("meta: {steps: true}\n", ["meta.steps", "expected an integer", "got True (a boolean)"]),
        ("meta: {lr: .nan}\n", ["meta.lr", "expected a finite number"]),
        ("meta: {lr: 1e999}\n", ["meta.lr", "the number 1e999 is too large"]),
        ("eval: {baselines: {adam: [0.01, yes]}}\n", ["eval.baselines.adam", "got True (a boolean)"]),
        ("meta: {shard_tasks: 1}\n", ["meta.shard_tasks", "expected a boolean"]),
    ]:
        path.write_text(body)
        with pytest.raises(ConfigError) as e:
            load_experiment_config(path)
        for w in words:
            assert w in str(e.value), (body, str(e.value))
    path.write_text("meta: {lr: 3e-4, steps: 5}\n")
    assert load_experiment_config(path).meta.lr == 3e-4


def test_option_values_are_read_like_config_values():
    from mplp_graph.config.load import read_value

    assert read_value("1e-3") == 0.001 and read_value("4") == 4 and read_value("[1, 2]") == [1, 2] and read_value("hidden") == "hidden"
    with pytest.raises(mg.GraphSpecError, match=r"--set meta.lr:1:1: the number 1e999 is too large"):
        read_value("1e999", "--set meta.lr")


# ---------------------------------------------------------------------------------------------
# names and cascades


def test_misspelt_phase_of_one_arrow_is_an_error():
    text = mutate("    phase: backward\n    op: l2_grad", "    phase: backwrd\n    op: l2_grad")
    err = check(text, "arrows[4].phase", line_of(text, "    phase: backwrd"), ["phase 'backwrd' is used by this arrow only", "Did you mean 'backward'?", "name it in schedule.step"])
    assert len(err.issues) == 1
    # named in the schedule, it is a phase of its own (here: run after backward)
    ok = text.replace("inputs: {x:", "schedule: {step: [forward, backward, backwrd]}\ninputs: {x:")
    assert mg.loads_graph(ok, filename=FILE).schedule.step[-1] == "backwrd"


def test_misspelt_phase_with_an_explicit_step_suggests_once():
    text = mutate("    phase: backward\n    op: l2_grad", "    phase: backwrd\n    op: l2_grad").replace(
        "inputs: {x:", "schedule: {step: [forward, backward]}\ninputs: {x:")
    err = check(text, "arrows[4].phase", line_of(text, "    phase: backwrd"), ["never runs", "Did you mean 'backward'?"])
    assert len(err.issues) == 1, err


def test_misspelt_step_entry_is_one_problem():
    text = BASE.replace("inputs: {x:", "schedule: {step: [forward, backwrd]}\ninputs: {x:")
    err = check(text, "schedule.step[1]", line_of(text, "schedule: {step: [forward, backwrd]}"), ["unknown phase 'backwrd'", "Did you mean 'backward'?"])
    assert len(err.issues) == 1, err  # not one more per backward arrow


def test_two_writers_of_one_field_is_its_own_message():
    sgd = "    op: {name: sgd_mul, args: {lr: 0.1}}\n    inputs: [w, x, g]\n    updates: {w: message}"
    second = "\n  - name: W.sgd2\n    from: W\n    to: W\n    phase: backward\n" + sgd
    text = mutate(sgd, sgd + second)
    err = check(text, "arrows[8]", line_of(text, "  - name: W.sgd2"), ["arrows 'W.sgd' and 'W.sgd2' both write W.w in phase 'backward'", "one writer per phase"])
    assert len(err.issues) == 1 and "cycle" not in str(err)


def test_duplicate_arrow_name_in_a_scheduled_graph_is_one_problem():
    text = mutate("  - name: loss->b\n", "  - name: b->loss\n").replace(
        "inputs: {x:", "schedule: {phases: {forward: [[x->W], [W->b], [b->loss], [loss.value]]}}\ninputs: {x:")
    err = check(text, "arrows[4].name", line_of(text, "  - name: b->loss", nth=1), ["arrow name 'b->loss' is already used by arrows[2]"])
    assert len(err.issues) == 1, err


def test_misspelt_identity_map_suggests_it():
    text = mutate("    map: i -> i j\n", "    map: identiy\n")
    check(text, "arrows[0].map", line_of(text, "    map: identiy"), ["unknown index map 'identiy'", "Did you mean 'identity'?"])


def test_empty_share_keys_are_refused():
    for share in ("''", "' '", "{net: ''}"):
        text = mutate("    op: {name: sgd, args: {lr: 0.1}}\n", f"    op: {{name: sgd, args: {{lr: 0.1}}}}\n    share: {share}\n")
        check(text, "arrows[5].share", line_of(text, f"    share: {share}"), ["share keys must be non-empty names"])


def test_share_mapping_names_every_part():
    from mplp_graph.templates.mplp import mplp_feedforward

    text = mg.dump_graph(mplp_feedforward((2, 3), "relu", "l2", sharing="layers"))
    block = "  share:\n    net: b_net\n    norm: b0->W0\n"
    assert text.count(block) == 1
    err = load_error(text.replace(block, "  share:\n    net: b_net\n"))
    (loc, msg), = [(loc, msg) for loc, msg in err.issues if loc.path.endswith(".share")]
    assert "gives keys for ['net'] but not for ['norm']" in msg and "give every part a key" in msg
    err = load_error(text.replace(block, "  share:\n    net: b_net\n    nrom: b0->W0\n"))
    assert any("not ['nrom']. Did you mean 'norm'?" in msg for _, msg in err.issues), err


# ---------------------------------------------------------------------------------------------
# the command line


@pytest.mark.parametrize("argv, words", [
    (["inspect", "graphs/life_grid.yaml", "--batch", "0"], "argument --batch: expected an integer >= 1, got 0"),
    (["inspect", "graphs/life_grid.yaml", "--batch", "two"], "argument --batch: expected an integer >= 1, got 'two'"),
    (["train", "experiments/sinusoid/config.yaml", "--steps", "-3"], "argument --steps: expected an integer >= 1, got -3"),
    (["demo", "--runs", "0"], "argument --runs: expected an integer >= 1, got 0"),
    (["demo", "--seed", "-1"], "argument --seed: expected an integer >= 0, got -1"),
])
def test_numeric_options_are_validated(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_version():
    out = subprocess.run([sys.executable, "-m", "mplp_graph.cli", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == f"mplp-graph {mg.__version__}" and mg.__version__ != "0+unknown"
