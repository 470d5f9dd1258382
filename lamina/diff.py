"""Desired (`HostPlan`) against actual (`HostState`) → the changes that close the gap.

Pure: the same comparison serves `plan` (show reasons), `apply` (run the commands)
and `verify` (assert there is nothing to change). Mounts are compared semantically:
resolved paths, the lower stack in order, upper, work, the bind's source as
(device, root) and the read-only flag — never as raw option strings.

Layers that must be shipped or built are not shell commands: they are listed in
`Result.materialize` for the operation to do first; containers that wait for them are
mounted by a second comparison made after that.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field

from . import MAX_MOUNT_DATA, PROTECTED
from .facts import IMAGE_TOOLS, NEW_API_LOWERDIR_LIMIT, HostState, MountEntry
from .images import LayerRef
from .lock import BUSY
from .plan import Dir, HostPlan, Item, MountWant, depth
from .report import Result


@dataclass
class Change:
    key: str  # "overlay /srv/x", "volume data", ...
    reasons: list[str]
    unmount: list[str] = field(default_factory=list)  # shell lines, run innermost first
    mkdirs: list[tuple[str, int]] = field(default_factory=list)  # (path, mode) to create, parents first
    prepare: list[str] = field(default_factory=list)  # directories and files, before any mount
    inner: list[tuple[str, str]] = field(default_factory=list)  # mount points inside a tree mounted in
    # this run: (as written, resolved)
    apply: list[str] = field(default_factory=list)  # mounts, outer before inner
    targets: tuple[str, ...] = ()  # where apply mounts (as written and resolved)
    purge: list[str] = field(default_factory=list)
    depth: int = 0


@dataclass(frozen=True)
class Materialize:
    action: str  # ship | build | relink
    ref: LayerRef
    digest: str | None = None  # known digest (relink, or a cached run layer to rebuild)
    damaged: bool = False  # the stored layer's content changed: move it aside first


@dataclass(frozen=True)
class Lower:
    """A resolved lower stack, highest first: the paths to compare and the option value to
    mount (short link names from `cwd` for image layers, absolute paths otherwise)."""

    paths: tuple[str, ...]
    option: str
    cwd: str | None = None


def legacy_mount(lower: Lower, actual: HostState) -> bool:
    """Whether this lower stack must be mounted through mount(2)'s single data page: util-linux
    2.39+ passes options through the new mount API, which refuses a `lowerdir=` over 255 bytes
    (EINVAL, rc 32); LIBMOUNT_FORCE_MOUNT2=always makes it use mount(2), as 2.38 does. When
    the version was not read (facts.command reads it only for stacks that may be that long),
    the variable is set anyway: versions before 2.39 ignore it."""
    return len(lower.option) > NEW_API_LOWERDIR_LIMIT and (not actual.util_linux or actual.util_linux >= (2, 39))


def mount_form(lower: Lower, actual: HostState) -> str:
    """How an overlay with this lower stack is mounted on this host, for `inspect`."""
    what = f"lowerdir= of short links, mounted from {lower.cwd}" if lower.cwd else "lowerdir= of absolute paths"
    version = ".".join(map(str, actual.util_linux)) or "unknown"
    if legacy_mount(lower, actual):
        return (f"{what}; {len(lower.option)} bytes, over the new mount API's 255: mount(2) data"
                f" (LIBMOUNT_FORCE_MOUNT2=always, util-linux {version})")
    return f"{what}; {len(lower.option)} bytes (util-linux {version})"


def q(arg: str) -> str:
    return shlex.quote(arg)


class Host:
    """One comparison's view of a host: facts plus what was learnt from them."""

    def __init__(self, plan: HostPlan, actual: HostState):
        self.plan, self.actual = plan, actual
        self.links_dir = posixpath.join(plan.state_dir, "l")
        self.names = {t.split("/")[-2]: n for n, t in actual.links.items() if t.startswith("../layers/")}

    def digest(self, ref: LayerRef) -> str | None:
        if ref.digest:
            return ref.digest
        return self.actual.files.get(self.plan.cache_file(ref), "").strip() or None

    def ready(self, ref: LayerRef) -> str | None:
        """The layer's digest when it is on the host with its short link."""
        hex_ = self.digest(ref)
        return hex_ if hex_ in self.actual.layers and hex_ in self.names else None

    def lower(self, want: MountWant) -> Lower | None:
        """None while an image layer is not on the host yet."""
        if not want.layers:
            paths = tuple(self.actual.resolve(p) for p in want.lower)
            return Lower(paths, ":".join(paths)) if paths else None
        digests = [self.ready(ref) for ref in want.layers]
        if None in digests:
            return None
        paths = tuple(f"{self.plan.state_dir}/layers/{d}/diff" for d in digests)
        return Lower(paths, ":".join(self.names[d] for d in digests), self.links_dir)

    def found_lower(self, top: MountEntry) -> list[str]:
        """The mounted lower stack as absolute paths (relative entries are short links)."""
        out = []
        for entry in top.lower:
            if not entry.startswith("/"):
                entry = posixpath.normpath(posixpath.join(self.links_dir, self.actual.links.get(entry, entry)))
            out.append(entry)
        return out


def compare_mount(want: MountWant, top: MountEntry | None, host: Host, lower: Lower | None) -> list[str]:
    """Why the visible mount on want.target is not the wanted one (empty: it is)."""
    actual = host.actual
    if top is None:
        return ["not mounted"]
    if want.fstype != "bind" and top.fstype.split(".")[0] != want.fstype.split(".")[0] and \
            not {top.fstype, want.fstype} <= {"nfs", "nfs4"}:
        return [f"{top.fstype} ({top.source}) is mounted there instead of {want.fstype}"]
    if want.fstype not in ("bind", "overlay", "tmpfs") and top.source != want.source:
        return [f"{top.source} is mounted there instead of {want.source}"]
    reasons = []
    if want.fstype == "overlay" and lower is not None:
        found = host.found_lower(top)
        if found != list(lower.paths):
            reasons.append(f"lower stack differs: want [{', '.join(lower.paths)}], found [{', '.join(found)}]")
        for name, path in (("upperdir", want.upper), ("workdir", want.work)):
            got = top.super_option(name)
            wanted = actual.resolve(path) if path else None
            if got != wanted:
                reasons.append(f"{name[:-3]} differs: want {wanted or 'none'}, found {got or 'none'}")
        if top.source != want.source:
            reasons.append(f"label differs: want {want.source}, found {top.source}")
    elif want.fstype == "bind":
        source = actual.resolve(want.source)
        backing = actual.backing(source)
        if backing is None:
            return [f"cannot tell which filesystem holds {source}"]
        rel = source[len(backing.target):] if backing.target != "/" else source
        expect_root = (backing.root.rstrip("/") + "/" + rel.lstrip("/")).rstrip("/") or "/"
        if (top.dev, top.root) != (backing.dev, expect_root):
            reasons.append(f"bind source differs: want {source}, found {top.source}:{top.root} ({top.fstype})")
    if top.read_only != want.read_only:
        reasons.append(f"want {'read-only' if want.read_only else 'read-write'}, found "
                       f"{'read-only' if top.read_only else 'read-write'}")
    return reasons


def is_ours(want: MountWant, top: MountEntry, host: Host) -> bool:
    """Whether a mount is the one this item made (maybe since changed): same kind of
    filesystem, and for a bind the same source. Only such a mount is removed."""
    if want.fstype != "bind":
        return top.fstype == want.fstype
    return not [r for r in compare_mount(want, top, host, None) if r.startswith(("bind", "cannot"))]


def mount_command(want: MountWant, actual: HostState, lower: Lower | None = None) -> str:
    """The mount command; ValueError when overlay options would not fit in one page."""
    target = q(actual.resolve(want.target))
    if want.fstype == "bind":
        opts = "bind,ro" if want.read_only else "bind"
        return f"mount -o {opts} -- {q(actual.resolve(want.source))} {target}"
    if want.fstype != "overlay":  # tmpfs, or a volume's filesystem (nfs, ...)
        opts = ",".join(("ro",) * want.read_only + want.options) or "defaults"
        return f"mount -t {q(want.fstype)} -o {q(opts)} -- {q(want.source)} {target}"
    if lower is None:  # a plain overlay: absolute lower paths
        paths = tuple(actual.resolve(p) for p in want.lower)
        lower = Lower(paths, ":".join(paths))
    opts = f"lowerdir={lower.option}"
    if want.upper and want.work:
        opts += f",upperdir={actual.resolve(want.upper)},workdir={actual.resolve(want.work)}"
    if want.layers:  # containers: no redirects or metacopy, so the upper dir alone says what changed
        opts += ",redirect_dir=off,metacopy=off"
    if len(opts) > MAX_MOUNT_DATA:
        raise ValueError(f"overlay options are {len(opts)} bytes; the kernel silently truncates mount data"
                         f" past one page (limit here {MAX_MOUNT_DATA})")
    env = "LIBMOUNT_FORCE_MOUNT2=always " if legacy_mount(lower, actual) else ""
    cd = f"cd {q(lower.cwd)} && " if lower.cwd else ""
    return f"{cd}{env}mount -t overlay -o {q(opts)} -- {q(want.source)} {target}"


def copy_up_command(want: MountWant) -> str:
    """Docker's volume copy-up: an empty volume mounted over a non-empty directory of the
    tree gets that directory's content first (modes, owners, xattrs kept by cp -a)."""
    src, data = q(want.target), q(want.source)
    return f"{EMPTY} if [ -d {src} ] && empty {data} && ! empty {src}; then cp -a -- {src}/. {data}/; fi"


# empty DIR: whether DIR has no entry, dot files included, with the shell's globs alone (two
# `ls -A` in subshells were four processes per volume mount).
EMPTY = ('empty() { for _f in "$1"/* "$1"/.[!.]* "$1"/..?*; do [ -e "$_f" ] || [ -L "$_f" ] && return 1; done;'
         ' return 0; };')


def umount_command(target: str, force: bool) -> str:
    if force:
        return f"umount -l -- {q(target)}"
    return (f"umount -- {q(target)} || fail {q(f'cannot unmount {target}; if it is busy,')}"
            f"' stop what uses it or set force: true'")


@dataclass
class DirFix:
    missing: int | None = None  # create it with this mode
    reason: str | None = None
    commands: tuple[str, ...] = ()
    error: str | None = None
    inner: bool = False  # create it once the tree it lies in is mounted


def dir_fix(d: Dir, actual: HostState, created: set[str], blind: bool) -> DirFix:
    """What makes one directory right. `blind`: the facts cannot see it (it lies in a
    tree about to be mounted), so act without checking. `created`: directories that
    some item of the plan creates."""
    mode = d.mode if d.mode is not None else d.new_mode
    if blind:
        return DirFix(inner=True)
    info = actual.paths.get(d.path)
    if info is None or not info.exists:
        if d.create:
            return DirFix(missing=mode)
        if d.path in created:
            return DirFix()
        return DirFix(error=f"{d.path} does not exist (create it, or set create_source: true)")
    if not info.is_dir and d.create:
        return DirFix(error=f"{d.path} is a {info.type}, not a directory")
    if d.mode is not None and (info.mode, info.uid, info.gid) != (d.mode, 0, 0):  # state dirs: root's
        return DirFix(reason=f"{d.path} has mode {info.mode:o} and owner {info.uid}:{info.gid}, want {d.mode:o} 0:0",
                      commands=(f"chown 0:0 -- {q(d.path)}", f"chmod {d.mode:o} -- {q(d.path)}"))
    return DirFix()


class _Run:
    """The state of one comparison as it walks the plan's items in order."""

    def __init__(self, plan: HostPlan, actual: HostState, replaced: frozenset[str] = frozenset()):
        self.replaced = replaced  # layers replaced in this run: containers on them are remounted
        self.host = Host(plan, actual)
        self.actual = actual
        self.result = Result()
        self.seen: set[str] = set()
        self.created = {d.path for i in plan.items if i.state == "present" for d in i.dirs if d.create}
        self.remounted: set[str] = set()  # targets (re)mounted now: what lies inside is unseen
        self.pending: set[str] = set()  # targets that wait for layers to be shipped or built

    def inside(self, path: str, targets: set[str]) -> bool:
        return bool(targets) and any(a in targets for a in _ancestors(path))

    def lost_upper(self, item: Item) -> str | None:
        """An upper dir that is gone although the overlay was set up before: its work dir
        is still there, or the overlay is still mounted on it."""
        precious = [d for d in item.dirs if d.precious]
        if not precious or item.mount is None:
            return None
        upper = precious[0].path
        info = self.actual.paths.get(upper)
        if info is not None and info.exists:
            return None
        work = self.actual.paths.get(item.mount.work or "")
        stack = self.actual.stack(item.mount.target)
        mounted = any(m.fstype == "overlay" and m.super_option("upperdir") == self.actual.resolve(upper) for m in stack)
        return upper if mounted or (work is not None and work.exists) else None

    def layer(self, item: Item) -> Change | None:
        ref = item.layer
        hex_ = self.host.digest(ref)
        if hex_ is not None and hex_ in self.actual.damaged:
            self.result.materialize.append(Materialize("ship" if ref.layer else "build", ref, hex_, damaged=True))
            return Change(item.key, ["content changed since it was stored (seal mismatch): replaced"])
        if hex_ is None:
            self.result.materialize.append(Materialize("build", ref))
            return Change(item.key, [f"not built yet: {_short(ref.run.command)}"])
        if hex_ not in self.actual.layers:
            action = "ship" if ref.layer else "build"
            self.result.materialize.append(Materialize(action, ref, hex_))
            size = f" ({_size(ref.layer.size)})" if ref.layer else ""
            return Change(item.key, [f"missing{size}"] if ref.layer else [f"cached layer {hex_[:12]} is missing"])
        if hex_ not in self.host.names:
            self.result.materialize.append(Materialize("relink", ref, hex_))
            return Change(item.key, ["its short link is missing"])
        return None

    def present(self, item: Item) -> Change | None:
        actual = self.actual
        reasons: list[str] = []
        mkdirs: list[tuple[str, int]] = []
        prepare: list[str] = []
        inner: list[tuple[str, str]] = []
        apply: list[str] = []
        unmount: list[str] = []
        missing: list[str] = []
        parent = actual.resolve(item.parent) if item.parent else None
        blind = parent is not None and parent in self.remounted
        if parent is not None and parent in self.pending:
            self.pending.add(actual.resolve(item.mount.target))
            return Change(item.key, ["waits for its container's image"])
        lost = self.lost_upper(item)
        if lost:
            self.result.errors.append(
                f"{item.key}: its writable layer {lost} was deleted, and the data written there with it; "
                f"lamina will not re-create it silently (`lamina reset` starts a container afresh, or "
                f"create the directory yourself)")
            return Change(item.key, [f"LOST DATA: {lost} was deleted"])
        for d in item.dirs:
            if d.path in self.seen:  # several items may need one directory; make it once
                continue
            self.seen.add(d.path)
            unseen = blind or self.inside(actual.resolve(d.path), self.remounted)
            fix = dir_fix(d, actual, self.created, unseen)
            if fix.missing is not None:
                missing.append(d.path)
                mkdirs.append((d.path, fix.missing))
            if fix.reason:
                reasons.append(fix.reason)
            if fix.error:
                self.result.errors.append(f"{item.key}: {fix.error}")
            if fix.inner:
                inner.append((d.path, actual.resolve(d.path)))
            prepare.extend(fix.commands)
        for path, content in item.files:
            if actual.files.get(path) != content:
                reasons.append(f"{path} differs" if path in actual.files else f"{path} is missing")
                prepare.append(f"printf '%s\\n' {q(content)} > {q(path)}")
        if missing:
            reasons.insert(0, f"missing {', '.join(missing)}")
        want = item.mount
        if want is not None and _protected(actual.resolve(want.target)):
            self.result.errors.append(f"{item.key}: {want.target} resolves on this host to "
                                      f"{actual.resolve(want.target)}, where lamina never mounts")
            return Change(item.key, ["refused: target resolves into a protected path"])
        if want is not None:
            target = actual.resolve(want.target)
            lower = self.host.lower(want) if want.fstype == "overlay" else None
            stack = actual.stack(want.target)
            if want.fstype == "overlay" and lower is None:
                self.pending.add(target)
                why = ["image layers are not on the host yet"]
            elif blind:  # what is mounted inside a tree being (re)mounted is redone with it
                why = ["remounted with the tree it lies in"] if stack else ["not mounted"]
            else:
                why = compare_mount(want, stack[-1] if stack else None, self.host, lower)
                replaced = [d for d in (self.host.digest(r) for r in want.layers) if d in self.replaced]
                if stack and not why and replaced:
                    why = [f"layer {replaced[0][:12]} was replaced: remount to use it"]
            if why:
                reasons += why
                if target not in self.pending:
                    self.remounted.add(target)
                    unmount += [umount_command(target, item.force)] * len(stack)
                    if item.copy_up:
                        apply.append(copy_up_command(want))
                    try:
                        apply.append(mount_command(want, actual, lower))
                    except ValueError as e:
                        self.result.errors.append(f"{item.key}: {e}")
        if not (reasons or apply or prepare or mkdirs or inner):
            return None
        return Change(item.key, reasons, unmount=unmount, mkdirs=mkdirs, prepare=prepare, inner=inner, apply=apply,
                      targets=(want.target, actual.resolve(want.target)) if want else (),
                      depth=depth(want.target) if want else 0)

    def absent(self, item: Item) -> Change | None:
        reasons, unmount, purge = [], [], []
        want = item.mount
        if want is not None:
            stack = self.actual.stack(want.target)
            if stack and is_ours(want, stack[-1], self.host):
                reasons.append("mounted, but the spec says absent")
                unmount.append(umount_command(self.actual.resolve(want.target), item.force))
        for path in item.purge:
            info = self.actual.paths.get(path)
            if info and info.exists:
                reasons.append(f"purge {path}")
                purge.append(f"rm -rf --one-file-system -- {q(path)}")
        if not reasons:
            return None
        return Change(item.key, reasons, unmount=unmount, purge=purge,
                      depth=depth(want.target) if want else 0)


def _protected(path: str) -> bool:
    """A resolved target that is / or lies under /proc, /sys, /dev, /boot (a symlink can lead there)."""
    return path == "/" or any(path == p or path.startswith(p + "/") for p in PROTECTED)


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _short(command: str, width: int = 40) -> str:
    line = " ".join(command.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def diff(plan: HostPlan, actual: HostState, replaced: frozenset[str] = frozenset()) -> Result:
    if actual.user is not None and actual.user[0] != 0:  # it would read root-only dirs as missing
        uid, name = actual.user
        return Result(errors=[f"the commands run as {name} (uid {uid}), not root: lamina mounts and owns root-only"
                              " state; connect as root or use --sudo (pyinfra: _sudo)"])
    lacking = [t for t in actual.missing if t not in IMAGE_TOOLS or plan.images or plan.gc]
    if lacking:
        return Result(errors=[f"this host has no {', '.join(lacking)}: lamina needs POSIX sh, coreutils and"
                              " util-linux (and GNU tar for images); install them"])
    run = _Run(plan, actual, replaced)
    if plan.gc:  # garbage collection only: nothing else of the plan is applied
        run.result.changes = _garbage(run.host)
        return run.result
    for item in plan.items:
        if item.layer is not None:
            change = run.layer(item)
        elif item.state == "present":
            change = run.present(item)
        else:
            change = run.absent(item)
        if change:
            run.result.changes.append(change)
        else:
            run.result.unchanged.append(item.key)
    _orphans(plan, actual, run.result)
    if plan.boot:
        _boot(plan, actual, run.result)
    if actual.staging and not run.result.materialize:
        debris = [posixpath.join(plan.state_dir, "staging", name) for name in actual.staging]
        run.result.changes.append(Change(
            "layer store", [f"{len(debris)} leftover(s) of interrupted builds"],
            purge=[f"if mountpoint -q {q(p)}/merged; then umount -R -l {q(p)}/merged; fi; "
                   f"rm -rf --one-file-system -- {q(p)}" for p in debris]))
    return run.result


def _boot(plan: HostPlan, actual: HostState, result: Result) -> None:
    """Keep the boot script (and systemd unit) that re-mount everything after a reboot."""
    from . import boot

    if result.materialize or result.errors:
        return  # written once the layers are there (the second comparison of the run)
    wanted = boot.files(plan, actual)
    reasons, lines = boot.commands(plan, wanted, actual)
    if actual.rc_local_mode == "?" and boot.UNIT not in wanted and wanted:
        result.warnings.append(f"{boot.RC_LOCAL} cannot be read line by line: left as it is, so it does not start"
                               f" {boot.script_path(plan)} and the mounts will not come back after a reboot")
    if reasons:
        result.changes.append(Change("boot mounts", reasons, purge=lines))


def _orphans(plan: HostPlan, actual: HostState, result: Result) -> None:
    """Mounts lamina made before that no spec names now: reported, unmounted only with
    --prune. The host's list of them is rewritten along with other changes."""
    try:
        before = set(json.loads(actual.files.get(plan.managed_file) or "[]"))
    except ValueError:
        before = set()
    current = set(plan.targets())
    orphans = sorted(t for t in before - current if actual.stack(t))
    if plan.prune:
        for t in sorted(orphans, key=depth, reverse=True):
            result.changes.append(Change(f"orphan {t}", ["no spec names it (--prune)"],
                                         unmount=[f"umount -R -- {q(t)}"], depth=depth(t)))
        orphans = []
    result.warnings += [f"orphan mount {t}: no spec names it now; left mounted (--prune unmounts it)"
                        for t in orphans]
    keep = json.dumps(sorted(current | set(orphans)))
    if result.changes and actual.files.get(plan.managed_file) != keep:
        sd = q(plan.state_dir)
        result.changes[-1].purge.append(f"{{ [ -d {sd} ] || mkdir -p -m 700 -- {sd}; }} && "
                                        f"printf '%s\\n' {q(keep)} > {q(plan.managed_file)}")


def _garbage(host: Host) -> list[Change]:
    """Layers that no image of the plan and no mounted overlay uses."""
    used = {host.digest(ref) for ref in host.plan.layers.values()}
    layers_dir = f"{host.plan.state_dir}/layers/"
    for m in host.actual.mounts:
        if m.fstype == "overlay":
            used.update(p[len(layers_dir):].split("/")[0] for p in host.found_lower(m) if p.startswith(layers_dir))
    changes = []
    for hex_ in sorted(host.actual.layers - used):
        cmds = [f"rm -f -- {q(host.links_dir + '/' + host.names[hex_])}"] if hex_ in host.names else []
        changes.append(Change(f"layer {hex_[:12]}", ["not used by any image of the spec or mounted overlay"],
                              purge=cmds + [f"rm -rf -- {q(layers_dir + hex_)}"]))
    return changes


PREAMBLE = "fail() { printf 'lamina: %s\\n' \"$*\" >&2; exit 1; }\nset -e\n" + BUSY


def mkdir_commands(dirs: list[tuple[str, int]]) -> list[str]:
    """Create the directories in one mkdir, then give each its mode: a process per directory
    is most of a first converge's cost on a host. All are made 700, then opened up to their
    modes: none is ever more open than asked, and the result is that of one mkdir -m each."""
    lines = []
    for i in range(0, len(dirs), ARGS_PER_COMMAND):  # argv stays far below the host's ARG_MAX
        part = dirs[i:i + ARGS_PER_COMMAND]
        lines.append(f"mkdir -p -m 700 -- {' '.join(q(p) for p, _ in part)}")
        for mode in sorted({m for _, m in part} - {0o700}):
            lines.append(f"chmod {mode:o} -- {' '.join(q(p) for p, m in part if m == mode)}")
    return lines


ARGS_PER_COMMAND = 256


def apply_lines(changes: list[Change]) -> list[str]:
    """The changes' mounts in order, each preceded by the mount points it needs inside trees
    mounted before it. A mount point joins the mkdir of earlier ones (a process per mount
    point was a third of a container's mounting) unless a mount made since covers it."""
    lines: list[str | list[str]] = []
    batch: list[str] | None = None
    since: set[str] = set()  # targets mounted since the open batch
    for change in changes:
        for path, resolved in change.inner:
            if (batch is None or len(batch) >= ARGS_PER_COMMAND
                    or any(a in since for p in (path, resolved) for a in (p, *_ancestors(p)))):
                batch, since = [], set()
                lines.append(batch)
            batch.append(path)
        lines += change.apply
        if change.apply:
            since.update(t.rstrip("/") or "/" for t in change.targets)
    return [f"mkdir -p -- {' '.join(q(p) for p in line)}" if isinstance(line, list) else line for line in lines]


def _ancestors(path: str) -> Iterator[str]:
    """The directories above an absolute path, nearest first, "/" last: a lookup per
    level in a set of targets, where a scan of the set for each path grew with its square."""
    path = path.rstrip("/")
    while path:
        path = path.rsplit("/", 1)[0]
        yield path or "/"


def script(result: Result) -> str:
    """One shell script for all changes: unmount innermost first, create directories,
    mount in plan order (outer before inner), then purge what the spec says to."""
    lines = [PREAMBLE]
    for change in sorted(result.changes, key=lambda c: -c.depth):
        lines += change.unmount
    lines += mkdir_commands([m for change in result.changes for m in change.mkdirs])
    for change in result.changes:
        lines += change.prepare
    lines += apply_lines(result.changes)
    for change in result.changes:
        lines += change.purge
    return "\n".join(lines)
