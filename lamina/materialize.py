"""Putting layers on a host: ship the ones built on the controller, build run steps on
the host, and recreate lost short links. Part of a converge (lamina/converge.py),
before the mounts, which need the layers.

Each host-side step is a script from `lamina/sh/` (POSIX sh, coreutils, util-linux,
GNU tar). A layer is unpacked or built in `<state_dir>/staging` and renamed into
`<state_dir>/layers/<digest>` only when complete.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import NamedTuple

from .diff import Host, Materialize
from .images import DEFAULT_PATH, LayerRef
from .lock import BUSY
from .plan import HostPlan
from .remote import Failed, Remote, message

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .channel import FilePart

SCRIPTS = Path(__file__).with_name("sh")


@cache
def _script(name: str) -> str:
    # busy: lock.BUSY, the one definition of how a script keeps the host's lock held (common.sh `store`)
    return (f"SD=$1; shift\nbusy() {{ {BUSY}; }}\n" + (SCRIPTS / "common.sh").read_text()
            + (SCRIPTS / f"{name}.sh").read_text())


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


class Stored(NamedTuple):
    """What materialize did, from what the host's scripts printed."""

    names: dict[str, str]  # digest → short link of every layer stored or relinked
    built: dict[str, str]  # run key → digest of every step run
    quarantined: list[str]  # damaged layers moved aside (then stored again)
    staged: list[str]  # what they became in staging/ (removed once nothing mounts them)


def materialize(remote: Remote, plan: HostPlan, todo: list[Materialize], names: Mapping[str, str],
                digests: Mapping[str, str]) -> Stored:
    """Do every step of `todo` in order, on this host; Failed says which went wrong."""
    sd = plan.state_dir
    stored = Stored({}, {}, [], [])
    names, digests = dict(names), dict(digests)  # digest → short link; run key → digest

    def run(cmd: str) -> list[str]:
        done = remote.run(cmd)
        if not done.ok:
            raise Failed(message(done, f"failed: {cmd[:80]}"))
        return done.stdout

    free = run(command("clean", sd))  # leftovers of an interrupted run go first; free space
    need = sum(m.ref.layer.size for m in todo if m.action == "ship")  # streamed: only the unpacked copy
    have = _available(free)
    if have is not None and need > have:
        raise Failed(f"not enough space in {sd}: {need >> 20} MiB needed to ship layers, {have >> 20} MiB free")
    damaged = [m.digest for m in todo if m.damaged]
    if damaged:
        staged = run(command("quarantine", sd, *damaged))
        stored.quarantined.extend(damaged)
        stored.staged.extend(line.split()[1] for line in staged if line.startswith("STAGED "))
    relinks = [m.digest for m in todo if m.action == "relink"]
    if relinks:
        stored.names.update(parse_layers(run(command("relink", sd, *relinks))))
    ships = [m.ref for m in todo if m.action == "ship"]
    if ships:
        stored.names.update(parse_layers(ship(remote, sd, ships)))
    names.update(stored.names)
    for step in todo:
        ref = step.ref
        if step.action == "build":
            below = [plan.layers[k] for k in ref.below]
            lowers = [names[ref_digest(b, digests)] for b in reversed(below)]
            built = parse_layers(run(command("run", sd, *run_args(ref, lowers))))
            names.update(built)
            stored.names.update(built)
            digests[ref.key] = stored.built[ref.key] = next(iter(built))
    return stored


RECORD = 10240  # GNU tar's default record: it reads whole ones, never past the one holding the end


def shipped(layer, hex_: str) -> Iterable[bytes | FilePart]:
    """What `ship` sends for one layer: the layer tar (its digest checked on the way), zeros
    to a whole tar record, then the line that tells the host the layer is complete (see
    lamina/sh/ship.sh)."""
    from .channel import verified_chunks

    yield from verified_chunks(str(layer.path), layer.sha256, layer.size)
    yield bytes(-layer.size % RECORD) + f"lamina-commit {hex_}\n".encode()


def ship(remote: Remote, state_dir: str, refs: list[LayerRef]) -> list[str]:
    """Stream layer tars into the host's store, one after another in one session (each
    digest checked on the way); its output lines."""
    from .channel import Corrupt

    def data() -> Iterable[bytes | FilePart]:
        for ref in refs:
            try:
                yield from shipped(ref.layer, ref.digest)
            except Corrupt as e:
                raise Failed(f"{ref.label}: the controller's cached layer is corrupt ({e}); delete it and"
                             " run again to rebuild it") from None

    args = [arg for ref in refs for arg in (ref.digest, str(ref.layer.size))]
    done = remote.stream(command("ship", state_dir, *args), data(), spool=f"{state_dir}/staging")
    if not done.ok:
        what = refs[0].label if len(refs) == 1 else f"{len(refs)} layers"
        raise Failed(f"{what}: shipping failed: {message(done, 'no message')}")
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
