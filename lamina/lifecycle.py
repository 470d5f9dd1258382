"""Commands on a container's writable layer: diff and commit.

Each works on hosts through a runner.Session: the container comes from the host's
plan, its layers' paths from the host's facts.
"""

from __future__ import annotations

import posixpath
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
from .images import LayerRef, image_store
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
    from .materialize import command, ship
    from .remote import Failed, PyinfraHost

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
            try:
                ship(PyinfraHost(s.state, host, {}), sd, [LayerRef(hex_, f"commit {name}", digest=hex_, layer=layer)])
            except Failed as e:
                raise LaminaError(f"{host.name}: {e}") from None
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


# --- cp -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Remote:
    host: str
    name: str  # a container or a volume
    path: str  # inside it


def parse_remote(arg: str) -> Remote | None:
    """HOST:CONTAINER:/path or HOST:VOLUME:path; anything else is a local path."""
    parts = arg.split(":", 2)
    if len(parts) != 3 or not parts[0] or not NAME_RE.match(parts[1]):
        return None
    return Remote(parts[0], parts[1], parts[2] or "/")


def _root(s: Session, host, name: str) -> str:
    """The directory a container's or volume's paths are relative to, on the host."""
    plan = s.plans[host.name]
    for item in plan.items:
        if item.kind == "container" and item.name == name:
            return item.mount.target
    return f"{plan.state_dir}/volumes/{name}/_data"


RESOLVE = r"""
root=$1 p=$2
[ -d "$root" ] || { echo "missing-root"; exit 0; }
r=$(realpath -m -- "$root/$p")
case "$r/" in "$(realpath -m -- "$root")"/*) ;; *) echo "escapes $r"; exit 0 ;; esac
if [ -d "$r" ]; then echo "dir $r"; elif [ -e "$r" ]; then echo "file $r";
elif [ -d "$(dirname -- "$r")" ]; then echo "none $r"; else echo "noparent $r"; fi
"""


# Every directory the archive writes into must resolve inside the root (a symlink in the
# container must not lead the extraction out of it).
CONFINED = r"""
root=$(realpath -m -- "$1") into=$2
shift 2
for d in "$@"; do
  case "$(realpath -m -- "$into/$d")/" in
    "$root"/*) ;;
    *) echo "lamina: $d leads out of the container" >&2; exit 1 ;;
  esac
done
"""


def _resolve(s: Session, host, remote: Remote) -> tuple[str, str]:
    """(kind, resolved path) of a path inside a container or volume; symlinks may not
    lead out of it (they are resolved on the host, so an absolute link would)."""
    root = _root(s, host, remote.name)
    out = s.run(host, f"sh -c {shlex.quote(RESOLVE)} lamina-cp {shlex.quote(root)} {shlex.quote(remote.path)}")
    kind, _, path = (out[0] if out else "missing-root").partition(" ")
    if kind == "missing-root":
        raise LaminaError(f"{host.name}: no container or volume {remote.name!r} (or it is not mounted)")
    if kind == "escapes":
        raise LaminaError(f"{host.name}: {remote.name}:{remote.path} leads out of {remote.name} (to {path})")
    return kind, path


def cp(inventory: str, specs: Sequence[str], src: str, dest: str, *, sudo: bool = False) -> str:
    """Copy between this machine and a container or volume on a host, as a tar stream;
    modes and owners are kept. Docker cp's rules: into an existing directory the source
    goes under its own name (SRC/. copies a directory's contents); otherwise it becomes
    DEST."""
    import tarfile

    rsrc, rdest = parse_remote(src), parse_remote(dest)
    if (rsrc is None) == (rdest is None):
        raise LaminaError("one side must be HOST:CONTAINER:PATH or HOST:VOLUME:PATH, the other a local path")
    remote = rsrc or rdest
    with session(inventory, specs, sudo=sudo, limit=[remote.host]) as s, tempfile.TemporaryDirectory() as tmp:
        if not s.active:
            raise LaminaError(f"{remote.host}: {s.report.hosts[remote.host].error}")
        host = s.active[0]
        staging = f"{s.plans[host.name].state_dir}/staging"
        tarball_ = f"{staging}/cp-{uuid.uuid4().hex}.tar"
        local_tar = Path(tmp) / "cp.tar"
        if rdest is not None:  # local → host
            source = Path(src)
            if not source.exists():
                raise LaminaError(f"{src}: no such file or directory")
            kind, target = _resolve(s, host, rdest)
            contents = src.endswith("/.")
            if kind == "dir":
                into, name = target, None if contents else source.resolve().name
            elif kind == "none" and not rdest.path.endswith("/"):
                into, name = posixpath.dirname(target), posixpath.basename(target)
            else:
                raise LaminaError(f"{dest}: {'parent directory missing' if kind != 'file' else 'not a directory'}")
            with tarfile.open(local_tar, "w", format=tarfile.PAX_FORMAT) as tf:
                if name is None:  # the directory's contents
                    for child in sorted(source.iterdir()):
                        tf.add(child, arcname=child.name)
                else:
                    tf.add(source, arcname=name)
            with tarfile.open(local_tar) as tf:  # tar -x follows symlinks that are already there
                dirs = sorted({posixpath.dirname(m.name) for m in tf.getmembers()} - {""})
            root = _root(s, host, rdest.name)
            s.run(host, f"sh -c {shlex.quote(CONFINED)} lamina-cp {shlex.quote(root)} {shlex.quote(into)} "
                        + " ".join(shlex.quote(d) for d in dirs))
            s.run(host, f"mkdir -p -m 700 -- {shlex.quote(staging)}")
            try:
                if not host.put_file(str(local_tar), tarball_, _sudo=s.state.config.SUDO):
                    raise LaminaError(f"{host.name}: upload failed")
                s.run(host, f"tar -x -p --numeric-owner -C {shlex.quote(into)} -f {shlex.quote(tarball_)}")
            finally:
                s.run(host, f"rm -f -- {shlex.quote(tarball_)}")
            return f"{host.name}:{rdest.name}:{posixpath.join(into, name or '')[len(_root(s, host, rdest.name)):]}"
        kind, source = _resolve(s, host, rsrc)  # host → local
        if kind not in ("dir", "file"):
            raise LaminaError(f"{src}: no such file or directory")
        contents = rsrc.path.endswith("/.")
        parent, base = (source, ".") if contents else (posixpath.dirname(source), posixpath.basename(source))
        s.run(host, f"mkdir -p -m 700 -- {shlex.quote(staging)} && tar -C {shlex.quote(parent)} --numeric-owner "
                    f"-cf {shlex.quote(tarball_)} -- {shlex.quote(base)}")
        try:
            if not host.get_file(tarball_, str(local_tar), _sudo=s.state.config.SUDO):
                raise LaminaError(f"{host.name}: download failed")
        finally:
            s.run(host, f"rm -f -- {shlex.quote(tarball_)}")
        target = Path(dest)
        if target.is_dir():
            into, rename = target, None
        elif target.parent.is_dir():
            into, rename = target.parent, target.name
        else:
            raise LaminaError(f"{dest}: parent directory missing")
        with tarfile.open(local_tar) as tf:
            members = tf.getmembers()
            if rename and base != ".":
                for m in members:
                    m.name = rename + m.name[len(base):] if m.name == base or m.name.startswith(base + "/") else m.name
            tf.extractall(into, members=members, filter="tar")
        return str(into / (rename or ("" if base == "." else base)))
