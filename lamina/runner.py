"""`lamina plan` and `lamina apply`: inventory + specs → per-host plans → one pyinfra
run → a per-host report.

Every spec is rendered and validated for every host before any connection is made,
so bad input never reaches a host.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import images
from .diff import diff
from .errors import LaminaError, SpecError, SpecInvalid
from .facts import HostState
from .plan import HostPlan, plan
from .report import HostReport, Report

ROLES_DIR = Path("roles")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def host_variables(name: str, data: dict[str, Any]) -> dict[str, Any]:
    """What a spec template sees: the host's inventory data, plus `host.name/data`."""
    return {**data, "host": {"name": name, "data": data}, "inventory_hostname": name}


def role_specs(roles: Iterable[str], roles_dir: Path = ROLES_DIR) -> list[Path]:
    specs = []
    for role in roles:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(role)):
            raise LaminaError(f"invalid role name {role!r}")
        path = roles_dir / str(role) / "spec.yml"
        if not path.is_file():
            raise LaminaError(f"role {role!r}: {path} not found")
        specs.append(path)
    return specs


def host_plan(name: str, data: dict[str, Any], specs: Sequence[str | Path] | None,
              roles_dir: Path = ROLES_DIR) -> HostPlan:
    """Render, validate and plan the specs for one host (its roles when none given)."""
    paths = list(specs) if specs else role_specs(data.get("lamina_roles", []), roles_dir)
    if not paths:
        raise LaminaError(f"{name}: no spec given and no lamina_roles in its inventory data")
    from . import loader  # YAML, pydantic: only when planning (a stored plan skips them)

    loaded = loader.load(paths, host_variables(name, data))
    return plan(loaded.spec, images.resolve(loaded) if loaded.spec.images else {})


def load_inventory(path: str):
    """A pyinfra inventory: a file, or a comma-separated host list, as pyinfra takes."""
    from pyinfra.api import State
    from pyinfra.context import ctx_state
    from pyinfra_cli.exceptions import CliError
    from pyinfra_cli.inventory import make_inventory

    if (path.endswith(".py") or "/" in path) and not Path(path).is_file():
        raise SpecInvalid([SpecError(path, 1, 1, "inventory file not found")])
    ctx_state.set(State())  # pyinfra executes inventory files inside a state context
    try:
        inventory = make_inventory(path)
    except CliError as e:
        raise LaminaError(f"inventory {path}: {e}") from None
    except SystemExit as e:  # an inventory file may exit with its own message
        raise LaminaError(str(e.code)) from None
    except Exception as e:
        raise LaminaError(f"inventory {path}: {type(e).__name__}: {e}") from None
    if not len(inventory):
        raise SpecInvalid([SpecError(path, 1, 1, "the inventory has no hosts (a file that does not"
                                            " exist, or a host name that does not resolve?)")])
    return inventory


class _Errors(logging.Handler):
    """Keeps pyinfra's error messages so the report can say why a host failed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(ANSI.sub("", record.getMessage()).strip())

    def about(self, name: str) -> str:
        found = [m for m in self.messages if m.startswith(f"[{name}]") or f" {name}" in m]
        return "; ".join(m.removeprefix(f"[{name}]").strip() for m in found) or "failed"


@dataclass
class Session:
    """Connected hosts with their plans, for commands that talk to hosts directly."""

    state: Any
    hosts: list[Any]  # pyinfra Hosts, inventory order
    plans: dict[str, HostPlan]
    report: Report
    log: _Errors

    @property
    def active(self) -> list[Any]:
        return [h for h in self.hosts if h in self.state.active_hosts]

    def run(self, host, command: str) -> list[str]:
        """Run one command (through sudo when asked); its stdout lines, or LaminaError."""
        ok, output = host.run_shell_command(command, print_output=False, _sudo=self.state.config.SUDO)
        if not ok:
            err = "; ".join(x.strip().removeprefix("lamina: ") for x in output.stderr_lines if x.strip())
            raise LaminaError(f"{host.name}: {err or 'command failed'}")
        return output.stdout_lines

    def fact(self, host) -> HostState:
        from . import facts

        return facts.parse(self.run(host, facts.command(self.plans[host.name])))


def _plans(hosts: Sequence[tuple[str, dict[str, Any]]], specs: Sequence[str], state_dir: str | None,
           **flags: bool) -> dict[str, HostPlan]:
    """Every host's plan, or SpecInvalid with every error of every host (before any connection)."""
    if state_dir is not None:  # commands that need no spec, only the state dir
        return {name: HostPlan(state_dir, ()) for name, _ in hosts}
    entry = _stored(hosts, specs, **flags)
    entry.save()
    return entry.plans


def _stored(hosts: Sequence[tuple[str, dict[str, Any]]], specs: Sequence[str], **flags: bool):
    """The hosts' plans as a planstore.Entry: the stored one when the specs, the inventory
    data and every file planning read are unchanged (no YAML, pydantic or Jinja2), else
    planned afresh. The caller saves it."""
    from . import planstore

    key = planstore.key(list(hosts), list(specs), flags)
    entry = planstore.load(key)
    if entry is None:
        with planstore.recording() as inputs:
            entry = planstore.Entry(key, inputs, _plan_all(hosts, specs, **flags))
    return entry


def _plan_all(hosts: Sequence[tuple[str, dict[str, Any]]], specs: Sequence[str], **flags: bool) -> dict[str, HostPlan]:
    plans: dict[str, HostPlan] = {}
    errors = []
    for name, data in hosts:
        try:
            plans[name] = replace(host_plan(name, data, specs), **flags)
        except SpecInvalid as e:
            errors += [err for err in e.errors if err not in errors]
    if errors:
        raise SpecInvalid(errors)
    return plans


def _select(names: Sequence[str], limit: Sequence[str], inventory_path: str) -> list[str]:
    chosen = [n for n in names if not limit or n in limit]
    if limit and not chosen:
        raise LaminaError(f"--limit {','.join(limit)} matches no host of {inventory_path}")
    return chosen


@contextmanager
def session(inventory_path: str, specs: Sequence[str], *, sudo: bool = False, limit: Sequence[str] = (),
            state_dir: str | None = None, plans: dict[str, HostPlan] | None = None,
            **flags: bool) -> Iterator[Session]:
    """Validate and plan every selected host (unless given their plans), then connect to them;
    hosts that cannot be reached are reported failed in the session's report."""
    from pyinfra.api import Config, State
    from pyinfra.api.connect import connect_all, disconnect_all
    from pyinfra.api.exceptions import PyinfraError

    inventory = load_inventory(inventory_path)
    chosen = _select([h.name for h in inventory], limit, inventory_path)
    hosts = [h for h in inventory if h.name in chosen]
    if plans is None:
        plans = _plans([(h.name, h.data.dict()) for h in hosts], specs, state_dir, **flags)

    log = _Errors()
    pyinfra_log = logging.getLogger("pyinfra")
    pyinfra_log.addHandler(log)
    pyinfra_log.setLevel(logging.WARNING)
    pyinfra_log.propagate = False
    state = State(inventory, Config(SUDO=sudo, FAIL_PERCENT=None))
    state.limit_hosts = hosts
    report = Report({h.name: HostReport(h.name) for h in hosts})  # inventory order
    try:
        try:
            connect_all(state)
        except PyinfraError:
            pass  # every host failed to connect; reported below
        for h in hosts:
            if h not in state.active_hosts:
                report.fail(h.name, log.about(h.name))
        yield Session(state, hosts, plans, report, log)
    finally:
        disconnect_all(state)
        pyinfra_log.removeHandler(log)


def _quick(connections, specs: Sequence[str], *, apply: bool, read=None,
           **flags: bool) -> tuple[Report, dict[str, HostPlan], dict[str, HostPlan], Any]:
    """The fast read: every host's facts through one `sh -s` on its OpenSSH connection, no
    pyinfra. Returns the report of the hosts that are done (in sync, or only planning), the
    plans of those with changes to apply, the plans of those whose read failed (pyinfra
    retries and explains), and the stored entry. `read`: what fastpath.read found already
    (the entry, the outputs)."""
    from . import facts

    chosen = list(connections.hosts)
    entry = read.entry if read and read.entry else _stored([(n, connections.hosts[n]) for n in chosen], specs,
                                                           **flags)
    plans = entry.plans
    outcomes = (read.outcomes if read and read.outcomes is not None
                else connections.run_all({n: entry.command(n) for n in chosen}))
    report, todo, rest = Report({n: HostReport(n) for n in chosen}), {}, {}
    for name in chosen:
        out = outcomes[name]
        refused = _sudo_refused(out.stderr) if not out.ok else None
        if refused:  # pyinfra would only ask for a password (or fail the same way)
            report.fail(name, refused)
            continue
        if not out.ok:
            rest[name] = plans[name]
            continue
        try:
            actual = facts.parse(out.stdout.splitlines())
            result = entry.known(name, out.stdout) or diff(plans[name], actual)
        except Exception:  # output pyinfra's path may read differently: let it try, and explain
            rest[name] = plans[name]
            continue
        if not result.in_sync:
            if apply:
                todo[name] = plans[name]
                continue
        else:
            entry.remember(name, out.stdout, result)
        report.record(name, plans[name], actual, result)
        if result.errors:
            report.fail(name, "; ".join(result.errors))
    entry.save()
    return report, todo, rest, entry


def _sudo_refused(stderr: str) -> str | None:
    """The one-line error when sudo would not run lamina's command (no rights, or a password
    it may not ask for), else None."""
    for line in stderr.splitlines():
        if line.startswith("sudo:"):
            return (f"{line.strip()} (lamina runs `sudo -n`: the user needs sudo without a password here, or"
                    " give pyinfra's _sudo_password in the inventory)")
    return None


def _converge(connections, plans: dict[str, HostPlan], report: Report, lock_timeout: float, entry) -> None:
    """Converge the hosts that differ, each on its OpenSSH connection, all at once."""
    from .converge import converge
    from .remote import Failed, OpenSSH

    def one(name: str) -> None:
        remote = OpenSSH(connections, name)
        try:
            settled = converge(remote, plans[name], report.record, lock_timeout, settle=entry.command(name))
            _settled(connections, name, plans[name], entry, settled)
        except Failed as e:
            report.fail(name, str(e))
        finally:
            remote.close()

    connections.each(one, plans)
    entry.save()


def _settled(connections, name: str, plan: HostPlan, entry, output: str | None) -> None:
    """A converged host read once more, still under its lock (`output`: read by the converge's
    script itself, else read now): in sync (as it should be), its output is remembered, so
    the next run (the re-run users make right after an apply) is answered by the fast path
    without the planner."""
    from . import facts

    if output is None:
        out = connections.run(name, entry.command(name))
        if not out.ok:
            return
        output = out.stdout
    try:
        result = diff(plan, facts.parse(output.splitlines()))
    except Exception:  # noqa: BLE001 - the next run plans it afresh, and says what it finds
        return
    if result.in_sync:
        entry.remember(name, output, result)


def run(inventory_path: str, specs: Sequence[str], *, apply: bool, sudo: bool = False,
        limit: Sequence[str] = (), gc: bool = False, lock_timeout: float = 60.0, prune: bool = False,
        check_layers: bool = False, early=None, read=None) -> Report:
    """Plan (and with apply=True, execute) on every host of the inventory. `gc`: instead,
    remove layers that nothing in the specs (nor any mounted overlay) uses.

    Every host is read first with one plain `ssh` (see `_quick`); hosts with something to
    do are converged on the same connections. pyinfra runs only for inventories it alone
    can read or connect to, and for hosts the quick read could not reach (it retries and
    says why). `early`: the connections, opened by the caller before it imported this
    module (sshrun.Connections.for_inventory); `read`: what fastpath.read found on them."""
    from . import sshrun

    flags = {"gc": gc, "prune": prune, "check_layers": check_layers}
    connections = early or sshrun.Connections.for_inventory(inventory_path, limit, sudo)
    if connections is None:  # an inventory only pyinfra can read or connect to
        return _run_pyinfra(inventory_path, specs, apply=apply, sudo=sudo, limit=limit, lock_timeout=lock_timeout,
                            **flags)
    with connections:
        report, todo, rest, entry = _quick(connections, specs, apply=apply, read=read, **flags)
        for name in connections.hosts:
            if name not in todo:
                connections.release(name)  # a process and three fds fewer while the others converge
        _converge(connections, todo, report, lock_timeout, entry)
        if rest:
            slow = _run_pyinfra(inventory_path, specs, apply=apply, sudo=sudo, limit=list(rest), plans=rest,
                                lock_timeout=lock_timeout, **flags)
            report.hosts.update(slow.hosts)  # keeps inventory order: every host has its entry already
            for name in rest:
                if report.hosts[name].result is None and report.hosts[name].error is None:
                    report.fail(name, "pyinfra did not run lamina's operation on this host")
    return report


def _run_pyinfra(inventory_path: str, specs: Sequence[str], *, apply: bool, sudo: bool, limit: Sequence[str],
                 lock_timeout: float, plans: dict[str, HostPlan] | None = None, **flags: bool) -> Report:
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.operation import add_op
    from pyinfra.api.operations import run_ops

    from .channel import Done
    from .operations import converge
    from .remote import message

    with session(inventory_path, specs, sudo=sudo, limit=limit, plans=plans, **flags) as s:
        report, state = s.report, s.state
        if not s.active:
            return report
        try:
            results = add_op(state, converge, plans=s.plans, record=report.record, lock_timeout=lock_timeout,
                             name="lamina: converge")
            if apply:
                try:
                    run_ops(state)
                except PyinfraError:
                    pass  # all hosts failed; each is reported below
        except EOFError:  # pyinfra's getpass with no terminal: sudo wants a password it was not given
            raise LaminaError("sudo asked for a password and there is no terminal to type it in: give it as"
                              " _sudo_password in the inventory, or allow sudo without a password") from None
        if apply:
            for h, meta in results.items():
                if h in state.failed_hosts and h.name not in {r.name for r in report.failed}:
                    lines = meta.stderr_lines if meta.is_complete() else []
                    lines = [*getattr(h, "lamina_failures", []), *lines]
                    report.fail(h.name, message(Done(False, [], lines), s.log.about(h.name)))
        else:
            for h in s.hosts:
                r = report.hosts.get(h.name)
                if r and r.result and r.result.errors:
                    report.fail(h.name, "; ".join(r.result.errors))
    return report


def inspect(inventory_path: str, specs: Sequence[str], container: str, *, sudo: bool = False,
            limit: Sequence[str] = ()) -> list[dict[str, Any]]:
    """`docker inspect`-like records of one container, one per host that has it in its spec."""
    from .diff import Host, mount_form

    report = run(inventory_path, specs, apply=False, sudo=sudo, limit=limit)
    out = []
    for h in report.hosts.values():
        if h.error:
            raise LaminaError(f"{h.name}: {h.error}")
        items = [i for i in h.plan.items if i.kind == "container" and i.name == container] if h.plan else []
        if not items:
            continue
        item, view = items[0], Host(h.plan, h.actual)
        want = item.mount
        lower = view.lower(want)
        stack = h.actual.stack(want.target)
        top = stack[-1] if stack else None
        image = next(name for name, img in h.plan.images.items() if tuple(reversed(img.layers)) == want.layers)
        digests = [view.digest(ref) for ref in h.plan.images[image].layers]
        chain = images.chain_id(h.plan.images[image], {ref.key: d for ref, d in
                                                       zip(h.plan.images[image].layers, digests, strict=True) if d})
        inner = [i for i in h.plan.items if i.kind == "mount" and i.parent == want.target]
        out.append({
            "Name": container,
            "Host": h.name,
            "Image": image,
            "ImageID": chain,
            "State": {"Status": "mounted" if top and top.fstype == "overlay" else "not mounted",
                      "UpToDate": not [c for c in h.result.changes if c.key == item.key]},
            "GraphDriver": {"Name": "overlay", "Data": {
                "LowerDir": ":".join(lower.paths) if lower else None,
                "UpperDir": want.upper, "WorkDir": want.work, "MergedDir": want.target,
            }},
            "MountForm": mount_form(lower, h.actual) if lower else None,
            "RootFS": {"Type": "layers", "Layers": [f"sha256:{d}" if d else None for d in digests]},
            "Mounts": [_mount_record(i, want.target) for i in inner],
        })
    if not out:
        raise LaminaError(f"no container {container!r} in the specs of the selected hosts")
    return out


def _mount_record(item, root: str) -> dict[str, Any]:
    m = item.mount
    kind = "volume" if item.volume else m.fstype
    record = {"Type": kind, "Source": m.source if kind != "tmpfs" else "",
              "Destination": "/" + m.target[len(root):].lstrip("/"), "RW": not m.read_only}
    if item.volume:
        record["Name"] = item.volume
    return record
