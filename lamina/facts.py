"""Reading a host: one shell command that reports everything lamina needs, and the
pure parser that turns its output into a `HostState`.

The command needs only POSIX sh, coreutils (stat, readlink, cat) and util-linux
(mount). Its output is line-based sections; paths never contain control characters
(the spec refuses them), so a tab-separated line per path is unambiguous.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .plan import HostPlan

_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(field_: str) -> str:
    """mountinfo writes space, tab, newline, backslash (and overlay's ',') as \\NNN."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field_)


@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    parent_id: int
    dev: str  # major:minor
    root: str  # path inside the filesystem that is mounted here (a bind's source)
    target: str
    options: frozenset[str]  # per-mount options: ro/rw, nosuid, ...
    fstype: str
    source: str
    super_options: tuple[str, ...]

    @property
    def read_only(self) -> bool:
        return "ro" in self.options or "ro" in self.super_options

    def super_option(self, name: str) -> str | None:
        for opt in self.super_options:
            if opt.startswith(name + "="):
                return opt[len(name) + 1:]
        return None

    @property
    def lower(self) -> tuple[str, ...]:
        """The lower stack, highest first, from either `lowerdir=a:b` or `lowerdir+=` form."""
        plus = [o[len("lowerdir+="):] for o in self.super_options if o.startswith("lowerdir+=")]
        if plus:
            return tuple(plus)
        value = self.super_option("lowerdir")
        return tuple(value.split(":")) if value else ()


def parse_mountinfo(lines: Iterable[str]) -> list[MountEntry]:
    entries = []
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        entries.append(MountEntry(
            mount_id=int(fields[0]),
            parent_id=int(fields[1]),
            dev=fields[2],
            root=unescape(fields[3]),
            target=unescape(fields[4]),
            options=frozenset(fields[5].split(",")),
            fstype=fields[sep + 1],
            source=unescape(fields[sep + 2]),
            # Split before unescaping: a literal ',' in a path arrives as \054.
            super_options=tuple(unescape(o) for o in fields[sep + 3].split(",")) if len(fields) > sep + 3 else (),
        ))
    return entries


@dataclass(frozen=True)
class PathInfo:
    resolved: str
    type: str | None = None  # None: missing; else stat's %F ("directory", ...)
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None

    @property
    def exists(self) -> bool:
        return self.type is not None

    @property
    def is_dir(self) -> bool:
        return self.type == "directory"


@dataclass(frozen=True)
class HostState:
    mounts: tuple[MountEntry, ...] = ()
    paths: dict[str, PathInfo] = field(default_factory=dict)
    util_linux: tuple[int, ...] = ()
    files: dict[str, str] = field(default_factory=dict)  # managed small files' content
    layers: frozenset[str] = frozenset()  # hex digests in <state_dir>/layers
    links: dict[str, str] = field(default_factory=dict)  # short link name → its target
    staging: tuple[str, ...] = ()  # leftovers of interrupted layer builds
    damaged: frozenset[str] = frozenset()  # layers whose content no longer matches their seal
    init: str = "none"  # "systemd" when systemd runs the host
    blobs: dict[str, str] = field(default_factory=dict)  # generated files' sha256

    def resolve(self, path: str) -> str:
        info = self.paths.get(path)
        return info.resolved if info else path

    def stack(self, path: str) -> list[MountEntry]:
        """Mounts on a path, bottom first (the last one is what users see)."""
        target = self.resolve(path)
        return [m for m in self.mounts if m.target == target]

    def backing(self, path: str) -> MountEntry | None:
        """The mount a (resolved) path lives on: the longest visible mount point prefix."""
        best = None
        for m in self.mounts:
            t = m.target
            if path == t or path.startswith(t.rstrip("/") + "/") or t == "/":
                if best is None or len(t) >= len(best.target):
                    best = m
        return best


MARK = "@@lamina"


def command(plan: HostPlan) -> str:
    """The one command that reads a host's state for this plan."""
    paths = " ".join(shlex.quote(p) for p in plan.paths()) or "/"
    files = " ".join(shlex.quote(f) for f in plan.files())
    return "\n".join([
        f"echo {MARK}-mountinfo; cat /proc/self/mountinfo",
        f"echo {MARK}-util-linux; mount -V 2>&1 | head -n 1",
        # two processes for all paths, however many (a fork per path costs ~5 ms)
        f"echo {MARK}-asked; printf '%s\\n' {paths}",
        f"echo {MARK}-resolved; readlink -m -- {paths}",
        f"echo {MARK}-stat; stat -L -c '%n\t%F\t%a\t%u\t%g' -- {paths} 2>/dev/null || :",
        f"echo {MARK}-files",
        *([f"for f in {files}; do if [ -f \"$f\" ]; then printf '%s\\t%s\\n' \"$f\" \"$(cat -- \"$f\")\"; fi; done"]
          if files else []),
        f"echo {MARK}-init; [ -d /run/systemd/system ] && echo systemd || echo none",
        *([f"echo {MARK}-blobs; for f in {' '.join(shlex.quote(b) for b in plan.blobs())}; do "
           "if [ -f \"$f\" ]; then printf '%s\\t%s\\n' \"$f\" \"$(sha256sum < \"$f\" | cut -c1-64)\"; fi; done"]
          if plan.blobs() else []),
        *(_store_listing(plan.state_dir) if plan.images or plan.gc else []),
        *(_seal_check(plan.state_dir) if plan.check_layers else []),
        f"echo {MARK}-end",
    ])


def _seal_check(state_dir: str) -> list[str]:
    """Every stored layer's content against its seal: prints the damaged ones."""
    from .materialize import command

    sd = shlex.quote(state_dir)
    return [f"echo {MARK}-seals; {command('checkseal', state_dir)} $(ls -1 -- {sd}/layers 2>/dev/null) || :"]


def _store_listing(state_dir: str) -> list[str]:
    """The layer store in three processes, whatever its size (`ls -l` shows link targets)."""
    sd = shlex.quote(state_dir)
    return [
        f"echo {MARK}-layers; ls -1 -- {sd}/layers 2>/dev/null || :",
        f"echo {MARK}-links; ls -l -- {sd}/l 2>/dev/null || :",
        f"echo {MARK}-staging; ls -1 -- {sd}/staging 2>/dev/null || :",
    ]


def parse(lines: Sequence[str]) -> HostState:
    sections: dict[str, list[str]] = {}
    current = None
    for line in lines:
        if line.startswith(MARK + "-"):
            current = line[len(MARK) + 1:].strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    if "end" not in sections:
        raise ValueError("incomplete fact output (no end marker)")
    stats = {}
    for line in sections.get("stat", []):
        parts = line.split("\t")
        if len(parts) == 5:
            stats[parts[0]] = parts[1:]
    paths = {}
    for path, resolved in zip(sections.get("asked", []), sections.get("resolved", []), strict=False):
        st = stats.get(path)
        paths[path] = PathInfo(resolved, st[0], int(st[1], 8), int(st[2]), int(st[3])) if st else PathInfo(resolved)
    version = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", " ".join(sections.get("util-linux", [])))
    files = {}
    for line in sections.get("files", []):
        path, _, content = line.partition("\t")
        files[path] = content
    links = {}
    for line in sections.get("links", []):
        left, arrow, target = line.partition(" -> ")
        if arrow:
            links[left.split()[-1]] = target.strip()
    return HostState(
        layers=frozenset(x.strip() for x in sections.get("layers", []) if x.strip()),
        links=links,
        staging=tuple(x.strip() for x in sections.get("staging", []) if x.strip()),
        damaged=frozenset(line.split(":")[0] for line in sections.get("seals", []) if ":" in line),
        init=(sections.get("init") or ["none"])[0].strip(),
        blobs=dict(line.split("\t", 1) for line in sections.get("blobs", []) if "\t" in line),
        mounts=tuple(parse_mountinfo(sections.get("mountinfo", []))),
        paths=paths,
        util_linux=tuple(int(g) for g in version.groups() if g) if version else (),
        files=files,
    )
