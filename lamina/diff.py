"""Desired (`HostPlan`) against actual (`HostState`) → the changes that close the gap.

Pure: the same comparison serves `plan` (show reasons), `apply` (run the commands)
and `verify` (assert there is nothing to change). Mounts are compared semantically:
resolved paths, the lower stack in order, upper, work, the bind's source as
(device, root) and the read-only flag — never as raw option strings.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from .facts import HostState, MountEntry
from .plan import Dir, HostPlan, Item, MountWant, depth

# util-linux 2.39+ mounts through the new API, which rejects a lowerdir= value of
# 256 bytes or more (util-linux#2287); the legacy mount(2) path takes up to a page.
NEW_API_LOWERDIR_LIMIT = 255


@dataclass
class Change:
    key: str  # "overlay /srv/x", "volume data", ...
    reasons: list[str]
    unmount: list[str] = field(default_factory=list)  # shell lines, run innermost first
    prepare: list[str] = field(default_factory=list)  # directories and files, before any mount
    apply: list[str] = field(default_factory=list)  # mounts, outer before inner
    purge: list[str] = field(default_factory=list)
    depth: int = 0


@dataclass
class Result:
    changes: list[Change] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def q(arg: str) -> str:
    return shlex.quote(arg)


def compare_mount(want: MountWant, top: MountEntry | None, actual: HostState) -> list[str]:
    """Why the visible mount on want.target is not the wanted one (empty: it is)."""
    if top is None:
        return ["not mounted"]
    if want.fstype in ("overlay", "tmpfs") and top.fstype != want.fstype:
        return [f"{top.fstype} ({top.source}) is mounted there instead of {want.fstype}"]
    reasons = []
    if want.fstype == "overlay":
        lower = [actual.resolve(p) for p in want.lower]
        if list(top.lower) != lower:
            reasons.append(f"lower stack differs: want [{', '.join(lower)}], found [{', '.join(top.lower)}]")
        for name, path in (("upperdir", want.upper), ("workdir", want.work)):
            found = top.super_option(name)
            wanted = actual.resolve(path) if path else None
            if found != wanted:
                reasons.append(f"{name[:-3]} differs: want {wanted or 'none'}, found {found or 'none'}")
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


def is_ours(want: MountWant, top: MountEntry, actual: HostState) -> bool:
    """Whether a mount is the one this item made (maybe since changed): same kind of
    filesystem, and for a bind the same source. Only such a mount is removed."""
    if want.fstype != "bind":
        return top.fstype == want.fstype
    return not [r for r in compare_mount(want, top, actual) if r.startswith(("bind", "cannot"))]


def mount_command(want: MountWant, actual: HostState) -> str:
    target = q(actual.resolve(want.target))
    if want.fstype == "bind":
        opts = "bind,ro" if want.read_only else "bind"
        return f"mount -o {opts} -- {q(actual.resolve(want.source))} {target}"
    if want.fstype == "tmpfs":
        opts = ",".join(("ro",) * want.read_only + want.options) or "defaults"
        return f"mount -t tmpfs -o {q(opts)} -- tmpfs {target}"
    lower = ":".join(actual.resolve(p) for p in want.lower)
    opts = f"lowerdir={lower}"
    if want.upper and want.work:
        opts += f",upperdir={actual.resolve(want.upper)},workdir={actual.resolve(want.work)}"
    env = ""
    if len(lower) > NEW_API_LOWERDIR_LIMIT and actual.util_linux >= (2, 39):
        env = "LIBMOUNT_FORCE_MOUNT2=always "
    return f"{env}mount -t overlay -o {q(opts)} -- {q(want.source)} {target}"


def umount_command(target: str, force: bool) -> str:
    if force:
        return f"umount -l -- {q(target)}"
    return (f"umount -- {q(target)} || fail {q(f'cannot unmount {target}; if it is busy,')}"
            f"' stop what uses it or set force: true'")


@dataclass
class DirFix:
    missing: bool = False
    reason: str | None = None
    commands: tuple[str, ...] = ()
    error: str | None = None


def dir_fix(d: Dir, actual: HostState, created: set[str], blind: bool) -> DirFix:
    """What makes one directory right. `blind`: the facts cannot see it (it lies in a
    tree about to be mounted), so act without checking. `created`: directories that
    some item of the plan creates."""
    mode = d.mode if d.mode is not None else d.new_mode
    if blind:
        return DirFix(commands=(f"mkdir -p -- {q(d.path)}",))
    info = actual.paths.get(d.path)
    if info is None or not info.exists:
        if d.create:
            return DirFix(missing=True, commands=(f"mkdir -p -m {mode:o} -- {q(d.path)}",))
        if d.path in created:
            return DirFix()
        return DirFix(error=f"{d.path} does not exist (create it, or set create_source: true)")
    if not info.is_dir and d.create:
        return DirFix(error=f"{d.path} is a {info.type}, not a directory")
    if d.mode is not None and info.mode != d.mode:
        return DirFix(reason=f"{d.path} has mode {info.mode:o}, want {d.mode:o}",
                      commands=(f"chmod {d.mode:o} -- {q(d.path)}",))
    return DirFix()


def diff(plan: HostPlan, actual: HostState) -> Result:
    result = Result()
    seen: set[str] = set()
    created = {d.path for i in plan.items if i.state == "present" for d in i.dirs if d.create}
    remounted: set[str] = set()  # targets (re)mounted in this run: what lies inside is unseen
    for item in plan.items:
        if item.state == "present":
            change = _present(item, actual, seen, created, remounted, result.errors)
        else:
            change = _absent(item, actual)
        if change:
            result.changes.append(change)
        else:
            result.unchanged.append(item.key)
    return result


def _inside_remount(path: str, remounted: set[str]) -> bool:
    return any(path.startswith(t.rstrip("/") + "/") for t in remounted)


def _present(item: Item, actual: HostState, seen: set[str], created: set[str],
             remounted: set[str], errors: list[str]) -> Change | None:
    reasons: list[str] = []
    prepare: list[str] = []
    apply: list[str] = []
    unmount: list[str] = []
    missing: list[str] = []
    blind = item.parent is not None and actual.resolve(item.parent) in remounted
    for d in item.dirs:
        if d.path in seen:  # several items may need one directory; make it once
            continue
        seen.add(d.path)
        unseen = blind or _inside_remount(actual.resolve(d.path), remounted)
        fix = dir_fix(d, actual, created, unseen)
        if fix.missing:
            missing.append(d.path)
        if fix.reason:
            reasons.append(fix.reason)
        if fix.error:
            errors.append(f"{item.key}: {fix.error}")
        (apply if unseen else prepare).extend(fix.commands)
    for path, content in item.files:
        if actual.files.get(path) != content:
            reasons.append(f"{path} differs" if path in actual.files else f"{path} is missing")
            prepare.append(f"printf '%s\\n' {q(content)} > {q(path)}")
    if missing:
        reasons.insert(0, f"missing {', '.join(missing)}")
    want = item.mount
    if want is not None:
        stack = actual.stack(want.target)
        if blind:  # what is mounted inside a tree being (re)mounted is redone with it
            why = ["remounted with the overlay it lies in"] if stack else ["not mounted"]
        else:
            why = compare_mount(want, stack[-1] if stack else None, actual)
        if why:
            reasons += why
            remounted.add(actual.resolve(want.target))
            unmount += [umount_command(actual.resolve(want.target), item.force)] * len(stack)
            apply.append(mount_command(want, actual))
    if not (reasons or apply or prepare):
        return None
    return Change(item.key, reasons, unmount=unmount, prepare=prepare, apply=apply,
                  depth=depth(want.target) if want else 0)


def _absent(item: Item, actual: HostState) -> Change | None:
    reasons, unmount, purge = [], [], []
    want = item.mount
    if want is not None:
        stack = actual.stack(want.target)
        if stack and is_ours(want, stack[-1], actual):
            reasons.append("mounted, but the spec says absent")
            unmount.append(umount_command(actual.resolve(want.target), item.force))
    for path in item.purge:
        info = actual.paths.get(path)
        if info and info.exists:
            reasons.append(f"purge {path}")
            purge.append(f"rm -rf --one-file-system -- {q(path)}")
    if not reasons:
        return None
    return Change(item.key, reasons, unmount=unmount, purge=purge,
                  depth=depth(want.target) if want else 0)


PREAMBLE = "fail() { printf 'lamina: %s\\n' \"$*\" >&2; exit 1; }\nset -e"


def script(result: Result) -> str:
    """One shell script for all changes: unmount innermost first, create directories,
    mount in plan order (outer before inner), then purge what the spec says to."""
    lines = [PREAMBLE]
    for change in sorted(result.changes, key=lambda c: -c.depth):
        lines += change.unmount
    for change in result.changes:
        lines += change.prepare
    for change in result.changes:
        lines += change.apply
    for change in result.changes:
        lines += change.purge
    return "\n".join(lines)
