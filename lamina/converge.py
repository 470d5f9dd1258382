"""One host's converge, once it is known to differ: lock and look again (one round trip),
put the layers there, then one script for directories, mounts and purges, which ends by
reading the host once more for the next run's fast path.

It runs on a `Remote` — pyinfra's connection inside lamina's operation, or the fast
read's OpenSSH connection — and raises remote.Failed with the user's message.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

from . import diff as diffing
from . import facts
from .materialize import Stored, known, materialize
from .plan import HostPlan
from .remote import Failed, Remote, message

Recorder = Callable[[str, HostPlan, facts.HostState, diffing.Result], None]


def read(remote: Remote, plan: HostPlan, lock_timeout: float) -> facts.HostState:
    """Take the host's lock and read it (again): another run may have changed it."""
    done = remote.lock(lock_timeout, facts.command(plan))
    if not done.ok:
        raise Failed(message(done, "reading the host's state failed"))
    return facts.parse(done.stdout)


def with_layers(actual: facts.HostState, plan: HostPlan, stored: Stored) -> facts.HostState:
    """The host's state once materialize is done, from what its scripts printed (each layer
    stored says `LAYER HEX NAME`) rather than from a second read of the whole host: the
    store dirs exist, staging holds only the quarantined layers, which went from the store,
    and the stored ones came."""
    gone = set(stored.quarantined) - set(stored.names)
    links = {n: t for n, t in actual.links.items() if t.split("/")[-2] not in stored.names}
    links.update({name: f"../layers/{hex_}/diff" for hex_, name in stored.names.items()})
    files = dict(actual.files)
    files.update({plan.cache_file(plan.layers[key]): hex_ for key, hex_ in stored.built.items()})
    return replace(actual, layers=(actual.layers - gone) | set(stored.names), links=links, files=files,
                   staging=tuple(stored.staged), damaged=actual.damaged - set(stored.quarantined))


def converge(remote: Remote, plan: HostPlan, record: Recorder, lock_timeout: float,
             settle: str | None = None) -> str | None:
    """`settle`: a command that reads the host once its script has run, still under the lock
    and in the same round trip; what it printed is returned (None: no script ran)."""
    actual = read(remote, plan, lock_timeout)
    result = diffing.diff(plan, actual)
    record(remote.name, plan, actual, result)
    if result.errors:  # refuse the whole host before touching it
        raise Failed("; ".join(result.errors))
    if result.materialize:
        view = diffing.Host(plan, actual)
        stored = materialize(remote, plan, result.materialize, view.names, known(view, plan.layers.values()))
        # the layers are there now: compare again to mount what waited for them
        replaced = frozenset(m.digest for m in result.materialize if m.damaged)
        first, actual = result, with_layers(actual, plan, stored)
        result = diffing.diff(plan, actual, replaced)
        # report what the first comparison could not see yet (boot files)
        seen = {c.key for c in first.changes}
        extra = [c for c in result.changes if c.key not in seen]
        late = {c.key for c in extra}
        record(remote.name, plan, actual, diffing.Result(
            first.changes + extra, [k for k in first.unchanged if k not in late], first.errors))
        if result.errors or result.materialize:
            raise Failed("; ".join(result.errors or [f"{m.ref.label}: still missing after shipping"
                                                     for m in result.materialize]))
    if not result.changes:
        return None
    script = diffing.script(result)
    mark = f"@@lamina-settled-{os.urandom(8).hex()}"
    if settle:  # (a subshell: the script's `exit` or `set -e` end it, and the read does not run)
        script = f"(\n{script}\n) || exit\nprintf '\\n%s\\n' {mark}\n{settle}"
    done = remote.run(script)
    if not done.ok:
        raise Failed(message(done, "the script failed"))
    if not settle:
        return None
    _, found, after = done.text.partition(f"\n{mark}\n")
    return after if found else None
