"""Putting layers on a host: ship the ones built on the controller, build run steps on
the host, and recreate lost short links. Runs inside the converge operation (as a
pyinfra FunctionCommand) before the mounts, which need the layers.

Each host-side step is a script from `lamina/sh/` (POSIX sh, coreutils, util-linux,
GNU tar). A layer is unpacked or built in `<state_dir>/staging` and renamed into
`<state_dir>/layers/<digest>` only when complete.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path

from .diff import Host, Materialize
from .images import DEFAULT_PATH, LayerRef
from .plan import HostPlan

SCRIPTS = Path(__file__).with_name("sh")


@cache
def _script(name: str) -> str:
    return "SD=$1; shift\n" + (SCRIPTS / "common.sh").read_text() + (SCRIPTS / f"{name}.sh").read_text()


def command(name: str, state_dir: str, *args: str) -> str:
    """`sh -c SCRIPT lamina-NAME STATE_DIR ARGS...` with every argument quoted."""
    return " ".join(["sh", "-c", shlex.quote(_script(name)), f"lamina-{name}",
                     *(shlex.quote(a) for a in (state_dir, *args))])


def run_script(ref: LayerRef) -> str:
    """What /bin/sh -c runs for a run step: cd to its workdir (made if missing), then the command."""
    workdir = ref.run.workdir or "/"
    return f"mkdir -p -- {shlex.quote(workdir)} && cd -- {shlex.quote(workdir)} || exit 1\n{ref.run.command}"


def run_args(ref: LayerRef, lowers: Iterable[str]) -> list[str]:
    env = [f"{k}={v}" for k, v in ref.run.env]
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, f"PATH={DEFAULT_PATH}")
    return [ref.key, run_script(ref), str(len(env)), *env, *lowers]


def parse_layers(lines: Iterable[str]) -> dict[str, str]:
    """The `LAYER <digest> <short link>` lines the host scripts print."""
    out = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "LAYER":
            out[parts[1]] = parts[2]
    return out


class Failed(Exception):
    pass


def materialize(state, host, plan: HostPlan, todo: list[Materialize], names: Mapping[str, str],
                digests: Mapping[str, str], connector_args: dict) -> bool:
    """pyinfra FunctionCommand body: do every step of `todo` in order, on this host."""
    sd = plan.state_dir
    names, digests = dict(names), dict(digests)  # digest → short link; run key → digest

    def run(cmd: str) -> list[str]:
        ok, output = host.run_shell_command(cmd, print_output=False, **connector_args)
        if not ok:
            message = "; ".join(line.strip() for line in output.stderr_lines if line.strip())
            raise Failed(message or f"failed: {cmd[:80]}")
        return output.stdout_lines

    try:
        free = run(command("clean", sd))  # leftovers of an interrupted run go first; free space
        need = sum(m.ref.layer.size for m in todo if m.action == "ship")  # streamed: only the unpacked copy
        have = _available(free)
        if have is not None and need > have:
            raise Failed(f"not enough space in {sd}: {need >> 20} MiB needed to ship layers, {have >> 20} MiB free")
        damaged = [m.digest for m in todo if m.damaged]
        if damaged:
            run(command("quarantine", sd, *damaged))
        relinks = [m.digest for m in todo if m.action == "relink"]
        if relinks:
            names.update(parse_layers(run(command("relink", sd, *relinks))))
        sudo = bool(connector_args.get("_sudo")) or state.config.SUDO
        for ref in (m.ref for m in todo if m.action == "ship"):
            names.update(parse_layers(ship(host, sd, ref.digest, ref.layer, sudo, label=ref.label,
                                           connector_args=connector_args)))
        for step in todo:
            ref = step.ref
            if step.action == "build":
                below = [plan.layers[k] for k in ref.below]
                lowers = [names[ref_digest(b, digests)] for b in reversed(below)]
                built = parse_layers(run(command("run", sd, *run_args(ref, lowers))))
                names.update(built)
                digests[ref.key] = next(iter(built))
    except Failed as e:
        host.log(f"lamina: {e}", log_func=logging.getLogger("pyinfra").error)
        host.lamina_failures = [*getattr(host, "lamina_failures", []), str(e)]  # for lamina's report
        return False
    return True


def ship(host, state_dir: str, hex_: str, layer, sudo: bool, label: str = "",
         connector_args: dict | None = None) -> list[str]:
    """Stream one layer tar into the host's store (digest checked on the way); its output lines."""
    from .channel import Corrupt, run, verified_chunks

    try:
        done = run(host, command("ship", state_dir, hex_, str(layer.size)),
                   verified_chunks(str(layer.path), layer.sha256, layer.size), sudo, connector_args,
                   spool=f"{state_dir}/staging")
    except Corrupt as e:
        raise Failed(f"{label or hex_[:12]}: the controller's cached layer is corrupt ({e}); delete it and"
                     " run again to rebuild it") from None
    if not done.ok:
        message = "; ".join(x.strip().removeprefix("lamina: ") for x in done.stderr if x.strip())
        raise Failed(f"{label or hex_[:12]}: shipping failed: {message or 'no message'}")
    return done.stdout


def _available(df_lines: list[str]) -> int | None:
    """Bytes available, from the last line of `df -Pk`."""
    try:
        return int(df_lines[-1].split()[3]) * 1024
    except (IndexError, ValueError):
        return None


def ref_digest(ref: LayerRef, digests: Mapping[str, str]) -> str:
    return ref.digest or digests[ref.key]


def known(host_view: Host, refs: Iterable[LayerRef]) -> dict[str, str]:
    """Run keys whose layers are on the host already: key → digest."""
    out = {}
    for ref in refs:
        d = host_view.digest(ref)
        if d and ref.run is not None:
            out[ref.key] = d
    return out
