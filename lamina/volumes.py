"""`lamina volume ls | inspect | rm`: named volumes on hosts, like `docker volume`."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from typing import Any

from . import facts
from .errors import LaminaError
from .runner import session
from .spec import NAME_RE

# One command per host: each volume's labels, then the mount table (to tell which are in use).
LIST = r"""
cd -- "$1/volumes" 2>/dev/null || exit 0
for v in *; do
  [ -d "$v/_data" ] || continue
  printf '@@volume %s\t%s\n' "$v" "$(cat -- "$v/labels.json" 2>/dev/null || echo '{}')"
done
echo @@mountinfo
cat /proc/self/mountinfo
"""


def _volumes(s, host, state_dir: str) -> list[dict[str, Any]]:
    lines = s.run(host, f"sh -c {shlex.quote(LIST)} lamina-volumes {shlex.quote(state_dir)}")
    split = lines.index("@@mountinfo") if "@@mountinfo" in lines else len(lines)
    mounts = facts.parse_mountinfo(lines[split + 1:])
    state = facts.HostState(mounts=tuple(mounts))
    out = []
    for line in lines[:split]:
        name, _, labels = line.removeprefix("@@volume ").partition("\t")
        data = f"{state_dir}/volumes/{name}/_data"
        backing = state.backing(data)
        rel = data[len(backing.target):] if backing and backing.target != "/" else data
        root = (backing.root.rstrip("/") + "/" + rel.lstrip("/")) if backing else None
        used = [m.target for m in mounts if backing and (m.dev, m.root) == (backing.dev, root) and m.target != data]
        own = [m for m in mounts if m.target == data]  # a volume with driver options is a mount itself
        try:
            labels_ = json.loads(labels)
        except ValueError:
            labels_ = {}
        out.append({"Host": host.name, "Name": name, "Driver": "local", "Mountpoint": data, "Labels": labels_,
                    "Scope": "local", "UsedBy": used,
                    "Options": {"type": own[-1].fstype, "device": own[-1].source} if own else {}})
    return out


def ls(inventory: str, *, state_dir: str, sudo: bool = False, limit: Sequence[str] = ()) -> list[dict[str, Any]]:
    out = []
    with session(inventory, (), sudo=sudo, limit=limit, state_dir=state_dir) as s:
        _raise_failed(s)
        for host in s.active:
            out += _volumes(s, host, state_dir)
    return out


def inspect(inventory: str, name: str, **kw) -> list[dict[str, Any]]:
    found = [v for v in ls(inventory, **kw) if v["Name"] == name]
    if not found:
        raise LaminaError(f"no volume {name!r} on the selected hosts")
    return found


def rm(inventory: str, name: str, *, state_dir: str, sudo: bool = False, limit: Sequence[str] = ()) -> list[str]:
    """Delete a volume and its data on each selected host that has it; refuse one in use."""
    if not NAME_RE.match(name):
        raise LaminaError(f"invalid volume name {name!r}")
    removed = []
    with session(inventory, (), sudo=sudo, limit=limit, state_dir=state_dir) as s:
        _raise_failed(s)
        targets = []
        for host in s.active:
            for v in _volumes(s, host, state_dir):
                if v["Name"] == name:
                    if v["UsedBy"]:
                        raise LaminaError(f"{host.name}: volume {name} is in use at {', '.join(v['UsedBy'])}")
                    targets.append(host)
        for host in targets:  # only once every host has been checked: all or nothing
            vdir = shlex.quote(f"{state_dir}/volumes/{name}")
            s.run(host, f"if mountpoint -q {vdir}/_data; then umount -- {vdir}/_data; fi && "
                        f"rm -rf --one-file-system -- {vdir}")
            removed.append(host.name)
    if not removed:
        raise LaminaError(f"no volume {name!r} on the selected hosts")
    return removed


def _raise_failed(s) -> None:
    failed = [f"{r.name}: {r.error}" for r in s.report.failed]
    if failed:
        raise LaminaError("; ".join(failed))
