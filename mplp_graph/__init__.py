"""mplp_graph: a graph-of-agents engine for learned learning rules (MPLP)."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("mplp_graph")
except _metadata.PackageNotFoundError:  # run from a source tree that was not installed
    __version__ = "0+unknown"

from mplp_graph.ops import builtin as _builtin  # noqa: F401  (registers the built-in ops)
from mplp_graph.learners import ops as _learner_ops  # noqa: F401  (registers the MPLP learners)
from mplp_graph.ops import cellular as _cellular_ops  # noqa: F401  (registers the cellular-automaton ops)
from mplp_graph.runtime.program import Program, compile_graph
from mplp_graph.config.load import dump_graph, load_graph, loads_graph
from mplp_graph.errors import CompileError, ConfigError, GraphSpecError, Location, MplpGraphError, NotDifferentiableError
from mplp_graph.ir.spec import ArrowSpec, FieldSpec, GraphSpec, GroupSpec, OpRef, ScheduleSpec
from mplp_graph.ir.verify import verify
from mplp_graph.ops.registry import Op, OpArgs, get_op, op_names, op_table, register_op
from mplp_graph.reference import load_reference_learner, load_reference_prior
from mplp_graph.templates.feedforward import feedforward
from mplp_graph.ir.pretty import format_graph
from mplp_graph.viz.draw import draw as draw_graph
from mplp_graph.viz.topology import to_dot, to_networkx
from mplp_graph.viz.html import view

__all__ = [
    "__version__",
    "ArrowSpec",
    "CompileError",
    "ConfigError",
    "FieldSpec",
    "GraphSpec",
    "GraphSpecError",
    "GroupSpec",
    "Location",
    "MplpGraphError",
    "NotDifferentiableError",
    "Op",
    "OpArgs",
    "OpRef",
    "Program",
    "ScheduleSpec",
    "compile_graph",
    "dump_graph",
    "feedforward",
    "get_op",
    "load_reference_learner",
    "load_reference_prior",
    "load_graph",
    "loads_graph",
    "op_names",
    "op_table",
    "register_op",
    "verify",
    "draw_graph",
    "format_graph",
    "to_dot",
    "to_networkx",
    "view",
]
