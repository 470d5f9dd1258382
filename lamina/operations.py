"""lamina's pyinfra fact and operation.

The fact reads a host in one command; the operation compares, and when the host differs
yields one FunctionCommand that converges it (lamina/converge.py) on pyinfra's
connection. pyinfra calls an operation's generator once to detect changes and again to
execute, reading the fact each time, so a no-op run costs two remote commands per host.
"""

from __future__ import annotations

from collections.abc import Mapping

from pyinfra import host
from pyinfra.api import FactBase, FunctionCommand, operation
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS

from . import diff as diffing
from . import facts, lock
from .converge import Recorder
from .converge import converge as converge_host
from .plan import HostPlan
from .remote import Failed, PyinfraHost


class LaminaState(FactBase):
    """Everything lamina needs to know about a host, for one plan."""

    def command(self, plan: HostPlan) -> str:  # type: ignore[override]
        return facts.command(plan)

    def process(self, output):  # type: ignore[override]
        return facts.parse(output)


def _ignore(*_) -> None:
    pass


def _apply(state, host, plan: HostPlan, record: Recorder, lock_timeout: float, connector_args: dict) -> bool:
    """FunctionCommand body: converge this host on pyinfra's connection."""
    remote = PyinfraHost(state, host, connector_args)
    try:
        converge_host(remote, plan, record, lock_timeout)
    except Failed as e:
        remote.report(str(e))
        return False
    return True


@operation(is_idempotent=True)
def converge(plans: Mapping[str, HostPlan], record: Recorder | None = None,
             lock_timeout: float = lock.DEFAULT_TIMEOUT):
    """Bring this host to its plan: layers, directories, mounts, purges."""
    plan = plans.get(host.name)
    if plan is None:
        return
    record = record or _ignore
    actual = host.get_fact(LaminaState, plan=plan)
    result = diffing.diff(plan, actual)
    if result.in_sync:
        record(host.name, plan, actual, result)
        host.noop("lamina: no changes")
        return
    if not host.state.is_executing:
        record(host.name, plan, actual, result)  # what a plan (or --dry) shows
    connector_args = {k: v for k, v in (host.current_op_global_arguments or {}).items()
                      if k in CONNECTOR_ARGUMENT_KEYS}
    yield FunctionCommand(_apply, (plan, record, lock_timeout, connector_args), {})
