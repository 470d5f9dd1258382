"""Spec → the state one host must be in (pure: no I/O).

A `HostPlan` is an ordered list of `Item`s — volumes, overlays, binds and the mounts
inside overlays — each saying which directories must exist and what must be mounted
where. Items are ordered so that a mount comes after every mount it lies inside.
"""

from __future__ import annotations

import heapq
import json
import posixpath
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

from .images import ImagePlan, LayerRef

if TYPE_CHECKING:  # a cached plan is read without the spec machinery (planstore.py)
    from .spec import Spec

STATE_MODE = 0o700  # state dirs are root-only
DATA_MODE = 0o755  # a volume's _data is what containers see, like Docker's


@dataclass(frozen=True)
class Dir:
    path: str
    mode: int | None = None  # enforced when set; else only the mode of a new dir
    create: bool = True  # False: must already exist (a bind source without create_source)
    new_mode: int = 0o755
    precious: bool = False  # holds written data (an upper dir): never re-created silently


@dataclass(frozen=True)
class MountWant:
    fstype: str  # overlay | bind | tmpfs
    target: str
    source: str  # overlay label, bind source path, or "tmpfs"
    lower: tuple[str, ...] = ()
    upper: str | None = None
    work: str | None = None
    read_only: bool = False
    options: tuple[str, ...] = ()  # extra filesystem options (tmpfs size=, mode=)
    layers: tuple[LayerRef, ...] = ()  # an image's layers, highest first (instead of lower)


@dataclass(frozen=True)
class Item:
    kind: str  # volume | overlay | bind | mount
    name: str  # the spec's name, or "OVERLAY:/path" for a mount inside an overlay
    state: str = "present"
    dirs: tuple[Dir, ...] = ()
    mount: MountWant | None = None
    purge: tuple[str, ...] = ()  # deleted when absent (only when the spec says purge)
    force: bool = False
    parent: str | None = None  # target of the overlay this mount lies in
    files: tuple[tuple[str, str], ...] = ()  # small managed files: (path, one-line content)
    layer: LayerRef | None = None  # a layer that must be on the host
    volume: str | None = None  # the volume a mount inside a tree mounts
    copy_up: bool = False  # an empty volume gets the tree's content at its target first (Docker)

    @property
    def key(self) -> str:
        if self.layer is not None:
            return self.layer.label
        if self.kind in ("container", "volume"):
            return f"{self.kind} {self.name}"
        return f"{self.kind} {self.mount.target if self.mount else self.name}"


@dataclass(frozen=True)
class HostPlan:
    state_dir: str
    items: tuple[Item, ...]
    images: dict[str, ImagePlan] = field(default_factory=dict)
    gc: bool = False  # compare only the layer store: remove layers nothing uses
    prune: bool = False  # unmount what lamina mounted before but no spec names now
    check_layers: bool = False  # re-check every stored layer's content against its seal (reads it all)
    boot: bool = True  # keep the mounts across reboots (systemd unit or rc.local boot script)

    def blobs(self) -> list[str]:
        """Generated files whose digest the facts report (see boot.py)."""
        from .boot import UNIT, script_path

        return [script_path(self), UNIT] if self.boot and self.targets() else []

    @property
    def managed_file(self) -> str:
        """Where the host remembers what lamina mounted, to tell orphans later."""
        return posixpath.join(self.state_dir, "mounts.json")

    @property
    def layers(self) -> dict[str, LayerRef]:
        return {i.layer.key: i.layer for i in self.items if i.layer is not None}

    def cache_file(self, ref: LayerRef) -> str:
        return posixpath.join(self.state_dir, "cache", ref.key)

    def targets(self) -> list[str]:
        """The mount targets of present items."""
        return sorted(i.mount.target for i in self.items if i.mount and i.state == "present")

    def files(self) -> list[str]:
        """Small files whose content the facts report: managed files, the list of what
        lamina mounted, and build-cache entries."""
        managed = [path for item in self.items for path, _ in item.files] + [self.managed_file]
        return managed + [self.cache_file(ref) for ref in self.layers.values() if ref.run is not None]

    def paths(self) -> list[str]:
        """Every path whose state the facts must report, in a stable order."""
        seen: dict[str, None] = {}
        for item in self.items:
            for d in item.dirs:
                seen[d.path] = None
            if item.mount:
                m = item.mount
                for p in (m.target, *m.lower, m.upper, m.work):
                    if p:
                        seen[p] = None
                if m.fstype == "bind":
                    seen[m.source] = None
            for p in item.purge:
                seen[p] = None
        return list(seen)


def _uses(item: Item) -> list[str]:
    """The paths a mount reads from: where it lies, and its lowers, upper, work, source."""
    m = item.mount
    return [posixpath.dirname(m.target), *m.lower, *(p for p in (m.upper, m.work) if p),
            *([m.source] if m.fstype == "bind" else [])]


def _mount_order(mounts: list[Item]) -> list[Item]:
    """Every mount after the mounts its paths lie in (an overlay stacked on another
    overlay's tree, a bind of a path inside a container, ...); otherwise outer before
    inner, then spec order. (A topological sort that always takes the first ready item.)"""
    pending = sorted(mounts, key=lambda i: depth(i.mount.target))
    at: dict[str, list[int]] = {}
    for n, item in enumerate(pending):
        at.setdefault(item.mount.target.rstrip("/") or "/", []).append(n)

    @cache
    def under(p: str) -> frozenset[int]:  # the mounts at p and at each of its parents
        here = frozenset(at.get(p.rstrip("/") or "/", ()))
        parent = posixpath.dirname(p)
        return here if parent == p else here | under(parent)

    def blockers(n: int) -> set[int]:
        return {m for p in _uses(pending[n]) for m in under(p) if m != n}

    waits = {n: blockers(n) for n in range(len(pending))}
    unblocks: dict[int, list[int]] = {}
    for n, bs in waits.items():
        for b in bs:
            unblocks.setdefault(b, []).append(n)
    ready = [n for n, bs in waits.items() if not bs]
    heapq.heapify(ready)
    out: list[int] = []
    while ready:
        n = heapq.heappop(ready)
        out.append(n)
        for m in unblocks.get(n, ()):
            waits[m].discard(n)
            if not waits[m]:
                heapq.heappush(ready, m)
    done = set(out)
    out += [n for n in range(len(pending)) if n not in done]  # a cycle (refused by validation where it matters)
    return [pending[n] for n in out]


def volume_dir(state_dir: str, name: str) -> str:
    return posixpath.join(state_dir, "volumes", name)


def depth(path: str) -> int:
    return path.rstrip("/").count("/")


def plan(spec: Spec, images: dict[str, ImagePlan] | None = None) -> HostPlan:
    """The host state a spec asks for. `images`: the spec's images resolved on the
    controller (images.resolve); needed when the spec has images."""
    from .loader import container_target

    sd = spec.state_dir
    images = images or {}
    state_dirs = (Dir(sd, STATE_MODE), Dir(posixpath.join(sd, "volumes"), STATE_MODE))
    volumes: dict[str, Item] = {}
    layers: dict[str, Item] = {}
    mounts: list[Item] = []

    def volume(name: str, labels: dict[str, str], state: str = "present", purge: bool = False, opts=None):
        vdir = volume_dir(sd, name)
        mount = None
        if opts is not None:  # Docker's local driver with options: _data is a mount itself
            mount = MountWant(opts.type, f"{vdir}/_data", opts.device or opts.type,
                              options=tuple(opts.o.split(",")) if opts.o else ())
        volumes[name] = Item(
            "volume", name, state,
            # a mounted _data's mode is the filesystem's (e.g. tmpfs mode=): not enforced then
            dirs=state_dirs + (Dir(vdir, STATE_MODE), Dir(f"{vdir}/_data", None if mount else DATA_MODE))
            if state == "present" else (),
            mount=mount,
            purge=(vdir,) if purge else (),
            files=((f"{vdir}/labels.json", json.dumps(labels, sort_keys=True)),) if state == "present" else (),
        )

    def inside(owner: str, target: str, spec_mounts, state: str, force: bool) -> None:
        """The volumes, binds and tmpfs mounted inside an overlay's or container's tree."""
        for m in spec_mounts:
            where = posixpath.join(target, m.target.lstrip("/"))
            dirs, options = [], []
            if m.type == "volume":
                if m.source not in volumes and state == "present":
                    volume(m.source, {})  # mounting an undeclared volume creates it, as in Docker
                source = f"{volume_dir(sd, m.source)}/_data"
            elif m.type == "bind":
                source = m.source
                dirs.append(Dir(source, create=m.bind.create_host_path))
            else:
                source = "tmpfs"
                if m.tmpfs.size is not None:
                    options.append(f"size={m.tmpfs.size}")
                if m.tmpfs.mode is not None:
                    options.append(f"mode={m.tmpfs.mode:o}")
            mounts.append(Item(
                "mount", f"{owner}:{m.target}", state,
                dirs=tuple(dirs + [Dir(where)]) if state == "present" else (),
                mount=MountWant("bind" if m.type != "tmpfs" else "tmpfs", where, source,
                                read_only=m.read_only, options=tuple(options)),
                force=force, parent=target, volume=m.source if m.type == "volume" else None,
                copy_up=m.type == "volume" and not m.volume.nocopy,
            ))

    for name, v in spec.volumes.items():
        volume(name, v.labels, v.state, v.purge and v.state == "absent", v.driver_opts)

    for name, ov in spec.overlays.items():
        dirs = [Dir(p) for p in ov.lower]
        if ov.upper and ov.work:
            dirs += [Dir(ov.upper, precious=True), Dir(ov.work, new_mode=0o700)]
        mounts.append(Item(
            "overlay", name, ov.state,
            dirs=tuple(dirs + [Dir(ov.target)]) if ov.state == "present" else (),
            mount=MountWant("overlay", ov.target, ov.label or "overlay", tuple(ov.lower),
                            ov.upper, ov.work, read_only=ov.upper is None),
            purge=tuple(p for p in (ov.upper, ov.work) if p) if ov.purge and ov.state == "absent" else (),
            force=ov.force,
        ))
        inside(name, ov.target, ov.mounts, ov.state, ov.force)

    for name, b in spec.binds.items():
        mounts.append(Item(
            "bind", name, b.state,
            dirs=(Dir(b.source, create=b.create_source), Dir(b.target)) if b.state == "present" else (),
            mount=MountWant("bind", b.target, b.source, read_only=b.read_only),
            force=b.force,
        ))

    for image in images.values():  # every declared image is made ready, used or not
        for ref in image.layers:
            layers.setdefault(ref.key, Item("layer", ref.source, layer=ref))

    containers_dir = posixpath.join(sd, "containers")
    for name, c in spec.containers.items():
        cdir = posixpath.join(containers_dir, name)
        target = container_target(spec, name)
        upper, work = f"{cdir}/upper", f"{cdir}/work"
        mounts.append(Item(
            "container", name, c.state,
            dirs=(Dir(containers_dir, STATE_MODE), Dir(cdir, STATE_MODE), Dir(upper, precious=True),
                  Dir(work, new_mode=0o700),
                  Dir(target)) if c.state == "present" else (),
            mount=MountWant("overlay", target, "overlay", upper=upper, work=work,
                            layers=tuple(reversed(images[c.image].layers)) if c.image in images else ()),
            purge=(cdir,) if c.purge and c.state == "absent" else (),
            force=c.force,
        ))
        inside(name, target, c.mounts, c.state, c.force)

    mounts = _mount_order(mounts)
    return HostPlan(sd, tuple(volumes.values()) + tuple(layers.values()) + tuple(mounts), images)
