"""lamina's pyinfra fact and operation.

The fact reads a host in one command; the operation compares and yields what closes
the gap: first, when layers are missing, a FunctionCommand that ships or builds them,
then one shell script for directories and mounts. pyinfra calls an operation's
generator once to detect changes and again to execute, reading the fact each time, so
a no-op run costs two remote commands per host and an apply acts on fresh state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pyinfra import host
from pyinfra.api import FactBase, FunctionCommand, StringCommand, operation
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS

from . import channel, facts, lock
from . import diff as diffing
from .materialize import known, materialize
from .plan import HostPlan

Recorder = Callable[[str, HostPlan, facts.HostState, diffing.Result], None]


class LaminaState(FactBase):
    """Everything lamina needs to know about a host, for one plan."""

    def command(self, plan: HostPlan) -> str:  # type: ignore[override]
        return facts.command(plan)

    def process(self, output):  # type: ignore[override]
        return facts.parse(output)


def _connector_args() -> dict:
    return {k: v for k, v in (host.current_op_global_arguments or {}).items() if k in CONNECTOR_ARGUMENT_KEYS}


def _sudo() -> bool:
    return bool((host.current_op_global_arguments or {}).get("_sudo")) or host.state.config.SUDO


@operation(is_idempotent=True)
def converge(plans: Mapping[str, HostPlan], record: Recorder | None = None,
             lock_timeout: float = lock.DEFAULT_TIMEOUT, seen: Mapping[str, facts.HostState] | None = None):
    """Bring this host to its plan: layers, directories, mounts, purges. `seen`: the hosts'
    state as the caller just read it (lamina's fast read), so pyinfra need not read it again
    to learn that there is something to do."""
    plan = plans.get(host.name)
    if plan is None:
        return
    seen_here = (seen or {}).get(host.name)
    if seen_here is not None and host.state.is_executing:
        act = True  # known to differ: straight to the lock
    else:
        actual = seen_here or host.get_fact(LaminaState, plan=plan)
        result = diffing.diff(plan, actual)
        act = bool(result.changes or result.errors) and host.state.is_executing
    if act:
        # About to act: hold the host's lock, then look again — another run may have
        # changed the host while we waited.
        yield FunctionCommand(lock.acquire, (lock_timeout, _sudo()), {})
        actual = host.get_fact(LaminaState, plan=plan)
        result = diffing.diff(plan, actual)
    if record is not None:
        record(host.name, plan, actual, result)
    if result.errors:
        # Refuse the whole host before touching it; the message reaches the user.
        yield StringCommand("printf", "'lamina: %s\\n'", *map(diffing.q, result.errors), ">&2;", "exit 1")
        return
    if result.materialize:
        view = diffing.Host(plan, actual)
        yield FunctionCommand(materialize, (plan, result.materialize, view.names,
                                            known(view, plan.layers.values()), _connector_args()), {})
        # the layers are there now: compare again to mount what waited for them
        replaced = frozenset(m.digest for m in result.materialize if m.damaged)
        first = result
        actual = host.get_fact(LaminaState, plan=plan)
        result = diffing.diff(plan, actual, replaced)
        if record is not None:  # report what the first comparison could not see yet (boot files)
            seen = {c.key for c in first.changes}
            extra = [c for c in result.changes if c.key not in seen]
            record(host.name, plan, actual, diffing.Result(first.changes + extra,
                                                           [k for k in first.unchanged if k not in
                                                            {c.key for c in extra}], first.errors))
        if result.errors or result.materialize:
            problems = result.errors or [f"{m.ref.label}: still missing after shipping" for m in result.materialize]
            yield StringCommand("printf", "'lamina: %s\\n'", *map(diffing.q, problems), ">&2;", "exit 1")
            return
    if result.changes:
        script = diffing.script(result)
        if len(script) > channel.BIG:  # over Linux's limit for one argument: send it on stdin
            yield FunctionCommand(channel.run_script, (script, _sudo(), _connector_args()), {})
        else:
            yield StringCommand(script)
    elif not result.materialize:
        host.noop("lamina: no changes")
