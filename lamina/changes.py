"""`lamina diff`: a container's changes against its image, in `docker diff` form.

Pure: the host reports its upper dir (a GNU tar listing) and stats of the same paths in
the image's layers; this module replays Docker's overlay2 algorithm on them (moby
`pkg/archive` changes() with OverlayChanges): walk the upper dir in lexical order; a
whiteout (char device 0/0) or an opaque directory is a deletion ("D"); a path that a
lower layer also has is a change ("C") — but a directory whose size, mode and mtime
equal the lower one's is skipped; anything else is an addition ("A"); the parent of an
added or deleted path is reported changed before it, once.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

# GNU tar `-cvv` listing: type, permissions, '*' when the entry has (opaque) xattrs,
# owner, size or "major,minor", date, time, "./path" (" -> target" for symlinks).
LISTING = re.compile(r"^(?P<type>.)\S{9}(?P<xattr>\*?)\s+\S+\s+(?P<size>\S+) \S+ \S+ \./(?P<path>.*?)"
                     r"(?: -> .*| link to .*)?$")


@dataclass(frozen=True)
class Entry:
    path: str  # "/etc/passwd"
    type: str  # tar's type letter: d - l c b p s h
    opaque: bool = False
    whiteout: bool = False


@dataclass(frozen=True)
class Stat:
    mode: int  # st_mode
    size: int
    mtime: str  # seconds.nanoseconds


def parse_listing(lines: list[str]) -> list[Entry]:
    out = []
    for line in lines:
        m = LISTING.match(line)
        if not m or not m["path"].rstrip("/"):
            continue
        path = "/" + m["path"].rstrip("/")
        kind = m["type"]
        out.append(Entry(path, kind, opaque=kind == "d" and bool(m["xattr"]),
                         whiteout=kind == "c" and m["size"] == "0,0"))
    return out


def parse_stats(lines: list[str]) -> dict[str, Stat]:
    """`stat --printf '%n\\t%f\\t%s\\t%.9Y\\n'` lines → {path: Stat}."""
    out = {}
    for line in lines:
        parts = line.rsplit("\t", 3)
        if len(parts) == 4:
            out[parts[0]] = Stat(int(parts[1], 16), int(parts[2]), parts[3])
    return out


def stat_paths(entries: list[Entry], upper: str, lowers: list[str]) -> list[str]:
    """What the host must stat: each upper dir, and every upper path in every lower."""
    paths = [upper + e.path for e in entries if e.type == "d"]
    for layer in lowers:
        paths += [layer + e.path for e in entries]
    return paths


def _same_time(a: str, b: str) -> bool:
    """moby's sameFsTime: equal, or equal seconds where one side has no nanoseconds."""
    if a == b:
        return True
    sa, _, na = a.partition(".")
    sb, _, nb = b.partition(".")
    return sa == sb and (int(na or 0) == 0 or int(nb or 0) == 0)


def _walk_order(entries: list[Entry]) -> list[Entry]:
    """filepath.Walk order: depth first, names sorted bytewise within each directory."""
    return sorted(entries, key=lambda e: [p.encode() for p in e.path.split("/")])


def changes(entries: list[Entry], stats: dict[str, Stat], upper: str, lowers: list[str]) -> list[tuple[str, str]]:
    """[(kind, path)] as `docker diff` prints them."""
    out: list[tuple[str, str]] = []
    changed_dirs: set[str] = set()
    for e in _walk_order(entries):
        if e.whiteout or e.opaque:
            kind = "D"
        else:
            kind = "A"
            for layer in lowers:
                lower = stats.get(layer + e.path)
                if lower is None:
                    continue
                mine = stats.get(upper + e.path)
                is_dir = (lower.mode & 0o170000) == 0o040000 and e.type == "d"
                if is_dir and mine and mine.size == lower.size and mine.mode == lower.mode \
                        and _same_time(mine.mtime, lower.mtime):
                    kind = ""  # the same directory: not a change of its own
                else:
                    kind = "C"
                break
            if not kind:
                continue
        if e.type == "d":
            changed_dirs.add(e.path)
        if kind in ("A", "D"):
            parent = posixpath.dirname(e.path)
            if parent not in changed_dirs and parent != "/":
                out.append(("C", parent))
                changed_dirs.add(parent)
        out.append((kind, e.path))
    return out
