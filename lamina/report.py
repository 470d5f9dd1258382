"""What a run found on each host, and how it is printed.

Plain classes, no dataclasses: an in-sync re-run builds and prints its report from stored
results without importing the planner (lamina/fastpath.py), and every import there is paid
on every no-op run.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Result:
    """One host compared with its plan: the changes to make (lamina.diff.Change), what is
    already right, errors that refuse the host, layers to ship or build first
    (lamina.diff.Materialize), and warnings."""

    __slots__ = ("changes", "unchanged", "errors", "materialize", "warnings")

    def __init__(self, changes: list | None = None, unchanged: list[str] | None = None,
                 errors: list[str] | None = None, materialize: list | None = None,
                 warnings: list[str] | None = None):
        self.changes = changes if changes is not None else []
        self.unchanged = unchanged if unchanged is not None else []
        self.errors = errors if errors is not None else []
        self.materialize = materialize if materialize is not None else []
        self.warnings = warnings if warnings is not None else []

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    @property
    def in_sync(self) -> bool:
        return not (self.changes or self.errors or self.materialize)

    def __repr__(self) -> str:
        return "Result(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"


class HostReport:
    __slots__ = ("name", "result", "error", "plan", "actual")

    def __init__(self, name: str, result: Result | None = None, error: str | None = None, plan: Any = None,
                 actual: Any = None):
        self.name, self.result, self.error, self.plan, self.actual = name, result, error, plan, actual

    @property
    def changed(self) -> int:
        return len(self.result.changes) if self.result else 0


class Report:
    def __init__(self, hosts: dict[str, HostReport] | None = None):
        self.hosts = hosts if hosts is not None else {}

    def record(self, name: str, plan: Any, actual: Any, result: Result) -> None:
        report = self.hosts.setdefault(name, HostReport(name))
        report.plan, report.actual, report.result = plan, actual, result

    def fail(self, name: str, error: str) -> None:
        self.hosts.setdefault(name, HostReport(name)).error = error

    @property
    def failed(self) -> list[HostReport]:
        return [h for h in self.hosts.values() if h.error]

    def as_json(self) -> dict[str, Any]:
        return {"hosts": {
            h.name: {
                "changed": [{"object": c.key, "reasons": c.reasons} for c in (h.result.changes if h.result else [])],
                "unchanged": list(h.result.unchanged) if h.result else [],
                "errors": list(h.result.errors) if h.result else [],
                "warnings": list(h.result.warnings) if h.result else [],
                "failed": h.error,
            } for h in self.hosts.values()
        }}

    def lines(self, applied: bool) -> list[str]:
        out = []
        for h in self.hosts.values():
            if h.result and not h.error:
                for c in h.result.changes:
                    out += [f"{h.name} {c.key}: {r}" for r in c.reasons]
                out += [f"{h.name} warning: {w}" for w in h.result.warnings]
            if h.error:
                out.append(f"{h.name}: FAILED: {h.error}")
            elif h.result:
                verb = "changed" if applied else "to change"
                out.append(f"{h.name}: {h.changed} {verb}, {len(h.result.unchanged)} unchanged")
        return out
