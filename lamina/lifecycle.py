"""Commands on a container's writable layer: diff and commit.

Each works on hosts through a runner.Session: the container comes from the host's
plan, its layers' paths from the host's facts.
"""

from __future__ import annotations

import shlex
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import changes, tarball
from .diff import Host
from .errors import LaminaError
from .images import image_store
from .plan import Item
from .runner import Session, session
from .spec import NAME_RE


@dataclass(frozen=True)
class Container:
    host: Any  # pyinfra Host
    item: Item
    upper: str
    lowers: tuple[str, ...]  # the image's layer dirs, highest first
    lower_names: tuple[str, ...]  # their short link names


def container(s: Session, host, name: str) -> Container:
    items = [i for i in s.plans[host.name].items if i.kind == "container" and i.name == name]
    if not items:
        raise LaminaError(f"{host.name}: no container {name!r} in its specs")
    item = items[0]
    view = Host(s.plans[host.name], s.fact(host))
    lower = view.lower(item.mount)
    if lower is None:
        raise LaminaError(f"{host.name}: container {name!r} is not applied yet (its image's layers are missing)")
    return Container(host, item, item.mount.upper, lower.paths, tuple(lower.option.split(":")))


def container_changes(s: Session, c: Container) -> list[tuple[str, str]]:
    """Two commands: a tar listing of the upper dir, then both trees' stats of its paths."""
    from .materialize import command

    listing = s.run(c.host, f"tar -C {shlex.quote(c.upper)} --xattrs --xattrs-include=trusted.overlay.opaque "
                            "--numeric-owner -cvvf /dev/null .")
    entries = changes.parse_listing(listing)
    if not entries:
        return []
    names = [n.rsplit("/", 1)[-1] for n in c.lower_names]
    report = s.run(c.host, command("changes", s.plans[c.host.name].state_dir, c.item.mount.target,
                                   str(len(names)), *names, "--", *changes.request(entries)))
    return changes.changes(entries, changes.parse_report(report))


def diff(inventory: str, specs: Sequence[str], name: str, *, sudo: bool = False,
         limit: Sequence[str] = ()) -> dict[str, list[tuple[str, str]]]:
    """{host: [(kind, path)]} for the container on each selected host that has it."""
    out = {}
    with session(inventory, specs, sudo=sudo, limit=limit) as s:
        failed = [f"{r.name}: {r.error}" for r in s.report.failed]
        if failed:
            raise LaminaError("; ".join(failed))
        for host in s.active:
            if any(i.kind == "container" and i.name == name for i in s.plans[host.name].items):
                out[host.name] = container_changes(s, container(s, host, name))
    if not out:
        raise LaminaError(f"no container {name!r} in the specs of the selected hosts")
    return out


# --- commit ---------------------------------------------------------------------------

TAR_OVERLAY = ("tar -C {dir} --xattrs --xattrs-include='trusted.overlay.*' --xattrs-include=security.capability "
               "--numeric-owner --format=posix -cf {out} .")


def fetch_layer(s: Session, host, directory: str, workdir: Path) -> tarball.Layer:
    """A directory on the host (an upper or a layer dir) → a Layer built on the controller."""
    sd = s.plans[host.name].state_dir
    remote = f"{sd}/staging/fetch-{uuid.uuid4().hex}.tar"
    local = workdir / f"{uuid.uuid4().hex}.tar"
    s.run(host, f"mkdir -p -m 700 -- {shlex.quote(sd)}/staging && "
                + TAR_OVERLAY.format(dir=shlex.quote(directory), out=shlex.quote(remote)))
    try:
        if not host.get_file(remote, str(local), _sudo=s.state.config.SUDO):
            raise LaminaError(f"{host.name}: cannot download {remote}")
    finally:
        s.run(host, f"rm -f -- {shlex.quote(remote)}")
    try:
        return tarball.from_overlay_tar(local)
    finally:
        local.unlink(missing_ok=True)


def image_layers(s: Session, host, item: Item, workdir: Path) -> list[tarball.Layer]:
    """The container's image as controller-side layers, lowest first (run layers fetched)."""
    view = Host(s.plans[host.name], s.fact(host))
    out = []
    for ref in reversed(item.mount.layers):
        if ref.layer is not None:
            out.append(ref.layer)
        else:
            out.append(fetch_layer(s, host, f"{s.plans[host.name].state_dir}/layers/{view.digest(ref)}/diff",
                                   workdir))
    return out


@dataclass(frozen=True)
class Committed:
    host: str
    image: str
    image_id: str  # the OCI manifest digest of the stored image
    layer: tarball.Layer
    archive: Path


def commit(inventory: str, specs: Sequence[str], name: str, image: str, *, sudo: bool = False,
           limit: Sequence[str] = ()) -> Committed:
    """The container's writable layer becomes a layer of its own; IMAGE = its image + that
    layer, stored as an OCI archive on the controller (`from: lamina:IMAGE`), and the new
    layer is put into the host's store at once. The container stays mounted on its upper."""
    from .materialize import command

    if not NAME_RE.match(image):
        raise LaminaError(f"invalid image name {image!r}")
    with session(inventory, specs, sudo=sudo, limit=limit) as s, tempfile.TemporaryDirectory() as tmp:
        hosts = [h for h in s.active if any(i.kind == "container" and i.name == name for i in s.plans[h.name].items)]
        if len(hosts) != 1:
            raise LaminaError(f"container {name!r} is on {len(hosts)} of the selected hosts; choose one with --host")
        host = hosts[0]
        c = container(s, host, name)
        # what Docker commits on overlay2: the upper dir, whiteouts and opaque dirs as they are
        layer = fetch_layer(s, host, c.upper, Path(tmp))
        layers = image_layers(s, host, c.item, Path(tmp)) + [layer]
        archive = image_store() / f"{image}.tar"
        image_id = tarball.write_oci_archive(layers, archive, image)
        sd = s.plans[host.name].state_dir
        hex_ = layer.diff_id.removeprefix("sha256:")
        if hex_ not in s.fact(host).layers:  # ship it back in normalized form, as any layer
            s.run(host, command("clean", sd))
            if not host.put_file(str(layer.path), f"{sd}/staging/{hex_}.tar", _sudo=s.state.config.SUDO):
                raise LaminaError(f"{host.name}: upload of the committed layer failed")
            s.run(host, command("ship", sd, hex_, layer.sha256))
        return Committed(host.name, image, image_id, layer, archive)


# --- reset ----------------------------------------------------------------------------


def reset(inventory: str, specs: Sequence[str], name: str, *, sudo: bool = False,
          limit: Sequence[str] = ()) -> list[str]:
    """Drop the container's writable layer on each selected host that has it, then mount
    it fresh (Docker's "remove the container, keep the image"); volumes are untouched.
    Returns the hosts reset."""
    from .runner import run

    done = []
    with session(inventory, specs, sudo=sudo, limit=limit) as s:
        failed = [f"{r.name}: {r.error}" for r in s.report.failed]
        if failed:
            raise LaminaError("; ".join(failed))
        for host in s.active:
            items = [i for i in s.plans[host.name].items if i.kind == "container" and i.name == name]
            if not items:
                continue
            m = items[0].mount
            target, upper, work = (shlex.quote(p) for p in (m.target, m.upper, m.work))
            # inner mounts go with the tree (umount -R); only upper and work are deleted
            s.run(host, f"if mountpoint -q {target}; then umount -R -- {target}; fi && "
                        f"rm -rf --one-file-system -- {upper} {work} && mkdir -m 755 -- {upper} && "
                        f"mkdir -m 700 -- {work}")
            done.append(host.name)
    if not done:
        raise LaminaError(f"no container {name!r} in the specs of the selected hosts")
    report = run(inventory, specs, apply=True, sudo=sudo, limit=done)
    failed = [f"{r.name}: {r.error}" for r in report.failed]
    if failed:
        raise LaminaError("reset, but remounting failed: " + "; ".join(failed))
    return done


# --- export ---------------------------------------------------------------------------


def export(inventory: str, specs: Sequence[str], image: str, out: Path, *, fmt: str = "docker",
           sudo: bool = False, limit: Sequence[str] = ()) -> str:
    """An image of the specs as a `docker save` (fmt docker) or OCI archive (fmt oci);
    layers built on a host (run steps) are fetched from the first selected host."""
    with session(inventory, specs, sudo=sudo, limit=limit) as s, tempfile.TemporaryDirectory() as tmp:
        hosts = [h for h in s.active if image in s.plans[h.name].images]
        if not hosts:
            raise LaminaError(f"no image {image!r} in the specs of the selected hosts")
        host = hosts[0]
        refs = s.plans[host.name].images[image].layers
        view = Host(s.plans[host.name], s.fact(host))
        layers = []
        for ref in refs:
            if ref.layer is not None:
                layers.append(ref.layer)
                continue
            digest = view.digest(ref)
            if digest is None or digest not in view.actual.layers:
                raise LaminaError(f"{host.name}: {ref.label} is not built there yet: apply first")
            layers.append(fetch_layer(s, host, f"{s.plans[host.name].state_dir}/layers/{digest}/diff", Path(tmp)))
        write = tarball.write_oci_archive if fmt == "oci" else tarball.write_docker_archive
        try:
            return write(layers, out, image if ":" in image else f"{image}:latest")
        except ValueError as e:
            raise LaminaError(f"cannot export {image}: {e}") from None
