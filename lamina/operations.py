"""lamina's pyinfra fact and operation.

The fact reads a host in one command; the operation compares and yields at most one
command (a script that closes the whole gap). pyinfra calls an operation's generator
once to detect changes and again to execute, reading the fact each time, so a no-op
run costs two remote commands per host and an apply acts on fresh state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, operation

from . import diff as diffing
from . import facts
from .plan import HostPlan

Recorder = Callable[[str, diffing.Result], None]


class LaminaState(FactBase):
    """Everything lamina needs to know about a host, for one plan."""

    def command(self, plan: HostPlan) -> str:  # type: ignore[override]
        return facts.command(plan)

    def process(self, output):  # type: ignore[override]
        return facts.parse(output)


@operation(is_idempotent=True)
def converge(plans: Mapping[str, HostPlan], record: Recorder | None = None):
    """Bring this host to its plan: create directories, (re)mount, purge."""
    plan = plans.get(host.name)
    if plan is None:
        return
    result = diffing.diff(plan, host.get_fact(LaminaState, plan=plan))
    if record is not None:
        record(host.name, result)
    if result.errors:
        # Refuse the whole host before touching it; the message reaches the user.
        yield StringCommand("printf", "'lamina: %s\\n'", *map(diffing.q, result.errors), ">&2;", "exit 1")
    elif result.changes:
        yield StringCommand(diffing.script(result))
    else:
        host.noop("lamina: no changes")
