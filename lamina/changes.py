"""`lamina diff`: a container's changes against its image, as `docker diff` reports them.

Docker compares two trees — the container's view and its image's — (moby
`pkg/archive` ChangesDirs, what overlay2 uses when the kernel has redirect_dir): a path
only in the new tree is added ("A", with everything below it), only in the old one
deleted ("D"), in both but with a different mode, owner, device or — for non-directories
— size or mtime, changed ("C"); a directory holding any change is reported changed
just before its contents. Within a directory, additions and changes come first, then
deletions (Docker's order there is a map's; ours is sorted by name).

Only what the container's upper dir holds can differ, so only those paths are compared:
the host reports the upper dir's listing, then the stat of each of its paths in both
trees, and what the image holds under each opaque directory.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field

# GNU tar `-cvv` listing: type, permissions, '*' when the entry has (opaque) xattrs,
# owner, size or "major,minor", date, time, "./path" (" -> target" for symlinks).
LISTING = re.compile(r"^(?P<type>.)\S{9}(?P<xattr>\*?)\s+\S+\s+(?P<size>\S+) \S+ \S+ \./(?P<path>.*?)"
                     r"(?: -> .*| link to .*)?$")
S_IFMT, S_IFDIR = 0o170000, 0o040000


@dataclass(frozen=True)
class Entry:
    path: str  # "etc/passwd", relative to the tree's root
    type: str  # tar's type letter: d - l c b p s h
    opaque: bool = False
    whiteout: bool = False


@dataclass(frozen=True)
class Stat:
    mode: int  # st_mode
    uid: int
    gid: int
    rdev: str
    size: int
    mtime: str  # seconds.nanoseconds

    @property
    def is_dir(self) -> bool:
        return self.mode & S_IFMT == S_IFDIR


def parse_listing(lines: list[str]) -> list[Entry]:
    out = []
    for line in lines:
        m = LISTING.match(line)
        if not m or not m["path"].rstrip("/"):
            continue
        kind = m["type"]
        out.append(Entry(m["path"].rstrip("/"), kind, opaque=kind == "d" and bool(m["xattr"]),
                         whiteout=kind == "c" and m["size"] == "0,0"))
    return out


def request(entries: list[Entry]) -> list[str]:
    """The paths to ask the host about; an opaque dir's ends in "/" (list its old names)."""
    return [e.path + "/" if e.opaque else e.path for e in entries]


@dataclass
class Trees:
    new: dict[str, Stat] = field(default_factory=dict)
    old: dict[str, Stat] = field(default_factory=dict)
    old_children: dict[str, list[str]] = field(default_factory=dict)


def parse_report(lines: list[str]) -> Trees:
    """The host script's output: `@@children DIR` sections with names, then per path an
    `@@path PATH` line followed by its `new` and `old` stats (each only if it exists)."""
    trees, children, path = Trees(), None, None
    for line in lines:
        if line.startswith("@@children "):
            children = line[len("@@children "):]
            trees.old_children[children] = []
        elif line.startswith("@@path "):
            children, path = None, line[len("@@path "):]
        elif children is not None:
            trees.old_children[children].append(line)
        elif path is not None:
            parts = line.split("\t")
            if len(parts) == 7 and parts[0] in ("new", "old"):
                stat = Stat(int(parts[1], 16), int(parts[2]), int(parts[3]), parts[4], int(parts[5]), parts[6])
                (trees.new if parts[0] == "new" else trees.old)[path] = stat
    return trees


def _same_time(a: str, b: str) -> bool:
    """moby's sameFsTimeSpec: equal, or equal seconds where one side has no nanoseconds."""
    sa, _, na = a.partition(".")
    sb, _, nb = b.partition(".")
    return sa == sb and (na == nb or int(na or 0) == 0 or int(nb or 0) == 0)


def different(old: Stat, new: Stat) -> bool:
    """moby's statDifferent (size and mtime do not count for directories)."""
    if (old.mode, old.uid, old.gid, old.rdev) != (new.mode, new.uid, new.gid, new.rdev):
        return True
    return not old.is_dir and (not _same_time(old.mtime, new.mtime) or old.size != new.size)


def changes(entries: list[Entry], trees: Trees) -> list[tuple[str, str]]:
    """[(kind, "/path")] in Docker's order."""
    below: dict[str, list[Entry]] = {}
    for e in sorted(entries, key=lambda x: x.path.encode()):
        below.setdefault(posixpath.dirname(e.path), []).append(e)
    out: list[tuple[str, str]] = []

    def walk(path: str, added: bool, reported: bool, hidden: list[str]) -> None:
        """The changes inside directory `path` ("" is the root): additions and changes,
        then deletions (whiteouts, and `hidden`: the image's names an opaque dir drops);
        the directory itself is reported changed before them unless it already was."""
        start, deleted = len(out), list(hidden)
        for e in below.get(path, []):
            new, old = trees.new.get(e.path), None if added else trees.old.get(e.path)
            if e.whiteout:
                if old is not None:
                    deleted.append(e.path)
                continue
            if new is None:
                continue
            if old is None:
                out.append(("A", "/" + e.path))
            elif different(old, new):
                out.append(("C", "/" + e.path))
            if new.is_dir:
                gone = []
                if e.opaque and old is not None and old.is_dir:
                    kept = {posixpath.basename(x.path) for x in below.get(e.path, []) if not x.whiteout}
                    gone = [f"{e.path}/{n}" for n in trees.old_children.get(e.path, []) if n not in kept]
                walk(e.path, old is None or not old.is_dir, out[-1:] == [("C", "/" + e.path)] or old is None,
                     gone)
        out.extend(("D", "/" + d) for d in sorted(deleted, key=str.encode))
        if path and len(out) > start and not reported:
            out.insert(start, ("C", "/" + path))

    walk("", False, True, [])
    return out
