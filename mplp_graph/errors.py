"""The project's error types.

Every error a user can cause derives from :class:`MplpGraphError`. Errors about a graph
document carry a location (file, line, column, YAML path) so that the message can point
at the offending text, following the pattern ``file:line:col path: what. fix.``
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """Where in a graph document something is: file, 1-based line/column, YAML path."""

    file: str | None = None
    line: int | None = None
    column: int | None = None
    path: str = ""

    def __str__(self) -> str:
        parts = []
        if self.file is not None:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            parts.append(where)
        if self.path:
            parts.append(self.path)
        return " ".join(parts)


class MplpGraphError(Exception):
    """Base class of every error raised on purpose by mplp_graph."""


class GraphSpecError(MplpGraphError):
    """A graph document or spec is invalid. Holds one or more located issues."""

    document = "graph"  # what the issues are in, for the heading of several

    def __init__(self, issues: list[tuple[Location, str]] | str, location: Location | None = None):
        if isinstance(issues, str):
            issues = [(location or Location(), issues)]
        self.issues = list(issues)
        super().__init__(self._render())

    def _render(self) -> str:
        lines = []
        for loc, msg in self.issues:
            where = str(loc)
            lines.append(f"{where}: {msg}" if where else msg)
        if len(lines) == 1:
            return lines[0]
        return f"{len(lines)} problems in {self.document}:\n" + "\n".join("  " + ln for ln in lines)


class ConfigError(GraphSpecError):
    """An experiment config file is invalid (located issues, as for a graph file)."""

    document = "config"


class CompileError(MplpGraphError):
    """The graph is valid but cannot be compiled or run as asked (e.g. wrong batch shapes)."""


class NotDifferentiableError(MplpGraphError):
    """A gradient was requested through an op that has no gradient (e.g. the step function)."""
