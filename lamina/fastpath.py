"""The in-sync re-run: the run lamina's users make most, kept as short as the wire allows.

When the stored entry for these specs and hosts is valid (planstore.load checks every file
planning read), each host's fact script runs on its connection; a host whose output is
byte-identical to the last in-sync read is in sync, and the stored result says so. When
every host is, the report is printed without importing the planner, the comparison or
YAML: this module and what it imports are all a no-op run loads after the connections
are opened. Otherwise the caller goes on with the entry and the outputs already read
(runner.run), so no host is read twice.
"""

from __future__ import annotations

from . import planstore
from .report import Report

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from .sshrun import Connections, Outcome


class Read:
    """The stored entry (or None) and, when it held every host's fact command, their outputs."""

    __slots__ = ("entry", "outcomes")

    def __init__(self, entry: planstore.Entry | None, outcomes: dict[str, Outcome] | None):
        self.entry, self.outcomes = entry, outcomes


def read(connections: Connections, specs: Sequence[str], flags: dict[str, bool]) -> tuple[Report | None, Read]:
    """(the report, when every host is as the last run left it in sync, else None; what was read)."""
    names = list(connections.hosts)
    entry = planstore.load(planstore.key([(n, connections.hosts[n]) for n in names], list(specs), flags))
    if entry is None or not all(n in entry.commands for n in names):
        return None, Read(entry, None)
    outcomes = connections.run_all({n: entry.commands[n] for n in names})
    report = Report()
    for name in names:
        out = outcomes[name]
        result = entry.known(name, out.stdout) if out.ok else None
        if result is None:
            return None, Read(entry, outcomes)
        report.record(name, None, None, result)
    return report, Read(entry, outcomes)
