"""Reading a host: one shell command that reports everything lamina needs, and the
pure parser that turns its output into a `HostState`.

The command needs only POSIX sh, coreutils (stat, readlink, cat) and util-linux
(mount). Its output is line-based sections; paths never contain control characters
(the spec refuses them), so a tab-separated line per path is unambiguous.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from .boot import RC_LOCAL
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


# Commands of coreutils, util-linux and GNU tar that lamina's host scripts run (by package);
# layers need tar and sha256sum only when the plan has images.
TOOLS = ("stat", "readlink", "mkdir", "mount", "umount", "mountpoint", "flock", "tar", "sha256sum")
IMAGE_TOOLS = frozenset({"tar", "sha256sum"})


@dataclass(frozen=True)
class HostState:
    mounts: tuple[MountEntry, ...] = ()
    paths: dict[str, PathInfo] = field(default_factory=dict)
    util_linux: tuple[int, ...] = ()
    user: tuple[int, str] | None = None  # (uid, name) the commands run as; None: not read
    missing: tuple[str, ...] = ()  # of TOOLS, the commands this host does not have
    files: dict[str, str] = field(default_factory=dict)  # managed small files' content
    layers: frozenset[str] = frozenset()  # hex digests in <state_dir>/layers
    links: dict[str, str] = field(default_factory=dict)  # short link name → its target
    staging: tuple[str, ...] = ()  # leftovers of interrupted layer builds
    damaged: frozenset[str] = frozenset()  # layers whose content no longer matches their seal
    init: str = "none"  # "systemd" when systemd runs the host
    blobs: dict[str, str] = field(default_factory=dict)  # generated files' sha256
    rc_local: tuple[str, ...] | None = None  # /etc/rc.local's lines, read when boot needs it; None: no such file
    rc_local_mode: str = ""  # "x" executable, "-" not, "?" there but not read as lines (not to be rewritten)

    def resolve(self, path: str) -> str:
        info = self.paths.get(path)
        return info.resolved if info else path

    @cached_property
    def _by_target(self) -> dict[str, list[MountEntry]]:
        out: dict[str, list[MountEntry]] = {}
        for m in self.mounts:
            out.setdefault(m.target, []).append(m)
        return out

    def stack(self, path: str) -> list[MountEntry]:
        """Mounts on a path, bottom first (the last one is what users see)."""
        return list(self._by_target.get(self.resolve(path), ()))

    def backing(self, path: str) -> MountEntry | None:
        """The mount a (resolved) path lives on: the longest visible mount point prefix."""
        while True:
            found = self._by_target.get(path.rstrip("/") or "/")
            if found:
                return found[-1]
            if posixpath.dirname(path) == path:
                return None
            path = posixpath.dirname(path)


MARK = "@@lamina"

# util-linux 2.39+ mounts through the new API, which rejects a lowerdir= value of
# 256 bytes or more (util-linux#2287); the legacy mount(2) path takes up to a page.
NEW_API_LOWERDIR_LIMIT = 255
SHORT_LINK = 6  # the shortest layer link name (lamina/sh/common.sh `link`)
FEW_FILES = 16  # up to this many managed files are read by the shell itself, not `head`


def shared_words(paths: Sequence[str]) -> tuple[list[str], list[str]]:
    """Shell words for paths, each parent directory used twice or more written once as a
    variable: (assignments, words). A spec of 200 containers reads ~1,800 paths; spelled out,
    the command would pass Linux's 128 KiB limit on one argument (sshd runs `sh -c COMMAND`)."""
    parents = Counter(posixpath.dirname(p) for p in paths)
    shared = sorted((d for d, n in parents.items() if n > 1 and len(d) > 4), key=lambda d: d.count("/"))
    names: dict[str, str] = {}

    def word(path: str) -> str:  # a parent's variable is defined before its children's
        parent = posixpath.dirname(path)
        return f'"${names[parent]}"/{shlex.quote(posixpath.basename(path))}' if parent in names else shlex.quote(path)

    assignments = []
    for d in shared:
        assignments.append(f"_d{len(names)}={word(d)}")
        names[d] = f"_d{len(names)}"
    return assignments, [word(p) for p in paths]


def above(paths: Iterable[str]) -> list[str]:
    """The directories above the paths that are not among them (not "/"), parents first."""
    given, out = set(paths), set()
    for path in given:
        parent = posixpath.dirname(path)
        while parent not in ("/", "") and parent not in out:
            out.add(parent)
            parent = posixpath.dirname(parent)
    return sorted(out - given, key=lambda d: (d.count("/"), d))


def command(plan: HostPlan) -> str:
    """The one command that reads a host's state for this plan."""
    paths = plan.paths() or ["/"]
    dirs = above(paths)
    assignments, words = shared_words([*paths, *dirs, *plan.files()])
    asked, dirs_words = words[:len(paths)], " ".join(words[len(paths):len(paths) + len(dirs)])
    files = " ".join(words[len(paths) + len(dirs):])
    stat = "LC_ALL=C stat -c '%n\t%F\t%a\t%u\t%g'"  # %F in English, whatever locale ssh passes on
    return "\n".join([
        f"echo {MARK}-mountinfo; cat /proc/self/mountinfo",
        # (each process here costs the host ~1 ms on every run: builtins where they do)
        *([f"echo {MARK}-util-linux; mount -V 2>&1"] if long_lowers(plan) else []),
        # who the commands run as: the shell's own ids (a builtin read); `id` names a non-root user
        f"echo {MARK}-user; _e=; while read -r _k _r _e _x; do [ \"$_k\" = Uid: ] && break; done"
        " < /proc/self/status 2>/dev/null; [ \"$_e\" = 0 ] && echo 'uid=0(root)' || LC_ALL=C id",
        # what lamina's scripts use beyond POSIX sh: a host without one is told so, not half-changed
        f"echo {MARK}-missing; for c in {' '.join(TOOLS)}; do command -v \"$c\" >/dev/null 2>&1 || echo \"$c\"; done",
        # the paths once, as "$@"; then two processes for all of them (a fork per path costs ~5 ms)
        *assignments,
        f"set -- {' '.join(asked)}",
        f"echo {MARK}-asked; printf '%s\\n' \"$@\"",
        # One lstat of the paths and of every dir above them. When none is a symlink, each path
        # is its own resolved form: no readlink (half the command's time at 200 containers).
        # Else both as before: readlink -m, and stat following links.
        f"_s=$({stat} -- \"$@\" {dirs_words} 2>/dev/null)",
        f"case $_s in *'\tsymbolic link\t'*) echo {MARK}-resolved; readlink -m -- \"$@\"",
        f"  echo {MARK}-stat; {stat} -L -- \"$@\" 2>/dev/null ;;",
        f"*) echo {MARK}-stat; printf '%s\\n' \"$_s\" ;; esac",
        f"echo {MARK}-files",
        *_first_lines(files, len(plan.files())),
        f"echo {MARK}-init; [ -d /run/systemd/system ] && echo systemd || echo none",
        # without systemd the boot script is started from rc.local: its lines (a builtin read,
        # each behind "|" so that none is taken for a section marker)
        *([f"if [ ! -d /run/systemd/system ] && {{ [ -e {RC_LOCAL} ] || [ -L {RC_LOCAL} ]; }}; then "
           f"echo {MARK}-rc-local; [ -x {RC_LOCAL} ] && echo x || echo -; {{ [ -f {RC_LOCAL} ] && while IFS= "
           f"read -r _l || [ -n \"$_l\" ]; do printf '|%s\\n' \"$_l\"; _l=; done < {RC_LOCAL}; }} || echo '?'; fi"]
          if plan.blobs() else []),
        # ("$@" is free again: the blobs that exist, for one sha256sum)
        *([f"echo {MARK}-blobs; set --; for f in {' '.join(shlex.quote(b) for b in plan.blobs())}; do "
           "[ -f \"$f\" ] && set -- \"$@\" \"$f\"; done; [ $# = 0 ] || sha256sum -- \"$@\" 2>/dev/null || :"]
          if plan.blobs() else []),
        *(_store_listing(plan.state_dir) if plan.images or plan.gc else []),
        *(_seal_check(plan.state_dir) if plan.check_layers else []),
        f"echo {MARK}-end",
    ])


def long_lowers(plan: HostPlan) -> bool:
    """Whether an overlay's lowerdir= may pass the new mount API's limit, so that how this
    host's util-linux mounts matters (diff.legacy_mount): `mount -V` is read only then."""
    for item in plan.items:
        m = item.mount
        if m is not None and m.fstype == "overlay":
            size = (SHORT_LINK + 1) * len(m.layers) if m.layers else sum(len(p) + 1 for p in m.lower)
            if size > NEW_API_LOWERDIR_LIMIT:
                return True
    return False


def _first_lines(words: str, count: int) -> list[str]:
    """The first line of each file, after a `==> PATH <==` line (what `head` prints for
    several files). A few are read by the shell (no process); many by one `head`, which
    is faster then than the shell's byte-at-a-time `read`."""
    if not count:
        return []
    if count > FEW_FILES:
        # (the echo ends a last line that has no newline of its own)
        return [f"head -n 1 -- /dev/null {words} 2>/dev/null || :; echo"]
    return [f"for _f in {words}; do [ -e \"$_f\" ] || continue; _l=; {{ IFS= read -r _l < \"$_f\"; }} 2>/dev/null"
            " || :; printf '==> %s <==\\n%s\\n' \"$_f\" \"$_l\"; done"]


def _seal_check(state_dir: str) -> list[str]:
    """Every stored layer's content against its seal: prints the damaged ones."""
    from .materialize import command

    sd = shlex.quote(state_dir)
    return [f"echo {MARK}-seals; {command('checkseal', state_dir)} $(ls -1 -- {sd}/layers 2>/dev/null) || :"]


def _store_listing(state_dir: str) -> list[str]:
    """The layer store in one process, whatever its size (`ls -l` shows link targets; the
    names of the other two dirs come from shell globs, builtins)."""
    sd = shlex.quote(state_dir)
    names = '; do [ -e "$f" ] || [ -L "$f" ] && printf \'%s\\n\' "${f##*/}"; done'
    return [
        f"echo {MARK}-layers; for f in {sd}/layers/*{names}",
        f"echo {MARK}-links; ls -l -- {sd}/l 2>/dev/null || :",
        f"echo {MARK}-staging; for f in {sd}/staging/*{names}",
    ]


def _user(lines: Sequence[str]) -> tuple[int, str] | None:
    """(uid, name) the commands run as, from `id`: "uid=0(root) gid=0(root) ...", with
    "euid=..." after it when that differs; a uid without a name is named by its number."""
    text = " ".join(lines)
    found = re.search(r"\beuid=(\d+)(?:\(([^)]*)\))?", text) or re.search(r"\buid=(\d+)(?:\(([^)]*)\))?", text)
    return (int(found[1]), found[2] if found[2] is not None else found[1]) if found else None


def _blobs(lines: Sequence[str]) -> dict[str, str]:
    """path → digest from `sha256sum` ("DIGEST  PATH"; a path with a backslash or newline is
    escaped and the line starts with a backslash)."""
    out = {}
    for line in lines:
        escaped = line.startswith("\\")
        line = line[1:] if escaped else line
        digest, sep, path = line.partition(" ")
        if not sep or len(digest) != 64:
            continue
        path = path[1:]  # " " (text) or "*" (binary)
        if escaped:
            path = re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], path)
        out[path] = digest
    return out


def _rc_local(section: list[str] | None) -> dict:
    """HostState's rc_local fields: a line not behind "|" (a read that failed, or a line
    break other than \\n in the file) leaves the file's lines unknown."""
    if section is None:
        return {}
    lines = section[1:]
    if not section or section[0] not in ("x", "-") or any(not x.startswith("|") for x in lines):
        return {"rc_local": (), "rc_local_mode": "?"}
    return {"rc_local": tuple(x[1:] for x in lines), "rc_local_mode": section[0]}


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
    asked = sections.get("asked", [])
    # no "resolved" section: nothing on the way to any path is a symlink (see `command`)
    resolved_all = sections.get("resolved") or [posixpath.normpath("/" + p.lstrip("/")) for p in asked]
    for path, resolved in zip(asked, resolved_all, strict=False):
        st = stats.get(path)
        paths[path] = PathInfo(resolved, st[0], int(st[1], 8), int(st[2]), int(st[3])) if st else PathInfo(resolved)
    version = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", (sections.get("util-linux") or [""])[0])
    files: dict[str, str] = {}
    current = None
    for line in sections.get("files", []):
        if current is not None:  # the file's first line, whatever it looks like
            files[current], current = line, None
        elif line.startswith("==> ") and line.endswith(" <=="):
            current = line[4:-4]
            files[current] = ""
    files.pop("/dev/null", None)
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
        blobs=_blobs(sections.get("blobs", [])),
        **_rc_local(sections.get("rc-local")),
        mounts=tuple(parse_mountinfo(sections.get("mountinfo", []))),
        paths=paths,
        util_linux=tuple(int(g) for g in version.groups() if g) if version else (),
        user=_user(sections.get("user", [])),
        missing=tuple(x.strip() for x in sections.get("missing", []) if x.strip()),
        files=files,
    )
