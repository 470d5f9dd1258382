"""Controller-side layer library: build layers, name them, ship them in overlay form.

A layer has two tar forms with the same content:

- OCI/Docker form: a deleted path is an empty file `.wh.NAME`, an opaque directory holds an
  empty file `.wh..wh..opq`. Its sha256 is the layer's DiffID, the identity images use.
- overlay form: a deleted path is a character device 0/0 (mode 0, owned 0:0: what overlayfs
  itself creates), an opaque directory carries the PAX record
  `SCHILY.xattr.trusted.overlay.opaque=y`. This is what lamina ships: the host extracts it with
  GNU tar alone (`tar -x --xattrs --xattrs-include='trusted.*' --xattrs-include=security.capability
  --numeric-owner -p`: without the second include, file capabilities are lost) straight into
  `layers/<hex>/diff`, which overlayfs can then use as a lower dir.

The way back: from_overlay_tar() reads a host's GNU tar of an upper or layer dir, and
write_docker_archive()/write_oci_archive() export a stack of layers for `docker load` and OCI
tools, regenerating each layer's OCI form from its overlay form (checked against the DiffID).

Output tars are deterministic: POSIX.1-2001 PAX format (a plain ustar header unless a name, a
value or an xattr needs an extended header, as Docker's Go archive/tar does), entries sorted
component-wise by path (parents before children; inside a directory, whiteouts before their
siblings, as the OCI spec asks), numeric uid/gid with empty uname/gname, integer mtime, no
atime/ctime, end of archive = two zero blocks (no padding to a 10 KiB record). Hard links stay
hard links: the first name of a link group in that order carries the data, the others link to it.

Building a layer from a big archive is slow, so results are cached in `cache_dir()`, keyed by the
source's identity (path, inode, size, mtime, ctime of the file or of every entry of a directory)
plus the step's arguments; the cached tars are named by their sha256.
"""

from __future__ import annotations

import bz2
import contextlib
import decimal
import functools
import gzip
import hashlib
import json
import lzma
import math
import os
import platform
import posixpath
import re
import stat
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import zstandard

from . import cache_dir, planstore
from .images import Layer

# Bump whenever the bytes written for the same input change: it invalidates every cache entry.
# 2: archive mtimes are read from the exact PAX decimal and rounded down (was: int() of a float).
FORMAT_VERSION = 2
CHUNK = 1 << 20

WH_PREFIX = ".wh."
WH_OPAQUE = ".wh..wh..opq"
WH_META = ".wh..wh."  # AUFS bookkeeping names (.wh..wh.plnk, .wh..wh.aufs): never content
OPAQUE_XATTR = "trusted.overlay.opaque"
XATTR_PAX = "SCHILY.xattr."
# Walks of a source tree carry only this xattr, as Docker's tar writer does: other xattrs on a
# controller checkout (user.xdg.*, security.selinux) are machine noise, not layer content.
WALK_XATTRS = ("security.capability",)

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]{64}")




# ---------------------------------------------------------------------------------------------
# Entries: one layer member in overlay form, before it is written.


@dataclass
class _Entry:
    name: str  # path in the layer: normalized, no leading or trailing "/"; "" is the layer root
    type: bytes = tarfile.DIRTYPE
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    size: int = 0
    linkname: str = ""  # symlink target
    dev: tuple[int, int] = (0, 0)
    xattrs: dict[str, str] = field(default_factory=dict)  # values as tarfile keeps them (surrogateescape)
    data: Callable[[], IO[bytes]] | None = None  # opens the content of a regular file
    link_group: object = None  # entries sharing this (hashable) object are hard links of one file

    @property
    def whiteout(self) -> bool:
        return self.type == tarfile.CHRTYPE and self.dev == (0, 0)

    @property
    def opaque(self) -> bool:
        return self.type == tarfile.DIRTYPE and self.xattrs.get(OPAQUE_XATTR) == "y"


def _sort_key(e: _Entry) -> list[tuple[int, bytes]]:
    # Component-wise, so "a/" and all of a's children come before "a-b" and "a.c".
    key = [(1, part.encode("utf-8", "surrogateescape")) for part in e.name.split("/")] if e.name else []
    if e.whiteout:
        key[-1] = (0, key[-1][1])
    return key


def _sorted(entries: dict[str, _Entry]) -> list[_Entry]:
    return sorted(entries.values(), key=_sort_key)


def _add_parents(entries: dict[str, _Entry]) -> None:
    """Give every entry its parent directories (0755, 0:0, mtime 0, as Docker's MkdirAll does).

    A parent that exists in the layer as a symlink or a file is an error: extracting the child
    would write through the symlink (possibly outside the root) or fail on the host.
    """
    for name in list(entries):
        parent = posixpath.dirname(name)
        while parent:
            found = entries.get(parent)
            if found is None:
                entries[parent] = _Entry(parent)
            elif found.type != tarfile.DIRTYPE:
                kind = "a symlink" if found.type == tarfile.SYMTYPE else "not a directory"
                raise ValueError(f"entry {name!r} lies under {parent!r}, which is {kind} in the same layer")
            else:
                break  # an existing directory: its own parents are checked when it is visited
            parent = posixpath.dirname(parent)


def _clean(name: str, what: str) -> str:
    """Normalize a member name (or hard link target) to a layer path; reject one that leaves the root.

    A leading "/" is dropped (GNU tar does the same when extracting); ".." that climbs above the
    root is an error rather than being clamped.
    """
    norm = posixpath.normpath(name.lstrip("/") or ".")
    if norm == ".." or norm.startswith("../"):
        raise ValueError(f"{what}: entry {name!r} leaves the archive root")
    return "" if norm == "." else norm


def _join(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix and rel else prefix or rel


# ---------------------------------------------------------------------------------------------
# Writing: one pass over the entries feeds the overlay form, the OCI form, or both.


class _Sink:
    """One tar stream being hashed and, when `out` is given, written."""

    def __init__(self, out: IO[bytes] | None = None):
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.hash.update(data)
        self.size += len(data)
        if self.out is not None:
            self.out.write(data)


def _header(name: str, type: bytes, mode: int, uid: int, gid: int, mtime: int, size: int = 0,
            linkname: str = "", dev: tuple[int, int] = (0, 0), xattrs: dict[str, str] | None = None) -> bytes:
    info = tarfile.TarInfo(name or ".")  # tobuf() appends "/" to directory names: the root is "./"
    info.type = type
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.mtime = mtime
    info.size = size
    info.linkname = linkname
    info.devmajor, info.devminor = dev
    info.pax_headers = {XATTR_PAX + k: v for k, v in sorted((xattrs or {}).items())}
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _wh_name(name: str) -> str:
    parent, base = posixpath.split(name)
    return _join(parent, WH_PREFIX + base)


def _write(entries: list[_Entry], overlay: _Sink | None, oci: _Sink | None) -> None:
    sinks = [s for s in (overlay, oci) if s is not None]
    first_of_group: dict[object, str] = {}
    for e in entries:
        if e.link_group is not None:
            first = first_of_group.setdefault(e.link_group, e.name)
            if first != e.name:
                hdr = _header(e.name, tarfile.LNKTYPE, e.mode, e.uid, e.gid, e.mtime, linkname=first)
                for s in sinks:
                    s.write(hdr)
                continue
        hdr = _header(e.name, e.type, e.mode, e.uid, e.gid, e.mtime, e.size, e.linkname, e.dev, e.xattrs)
        if overlay is not None:
            overlay.write(hdr)
        if oci is not None:
            oci.write(_oci_header(e, hdr))
        if e.type == tarfile.REGTYPE and e.size:
            _copy_data(e, sinks)
    for s in sinks:
        s.write(bytes(1024))


def _oci_header(e: _Entry, hdr: bytes) -> bytes:
    """The OCI-form header(s) of an entry whose overlay-form header is `hdr`.

    The conversion is moby's overlay "ConvertWrite": a whiteout becomes an empty 0600 file keeping
    owner and mtime; an opaque dir loses the xattr and gains a marker file that inherits its
    permission bits and owner, right after it (before any child). Anything else is unchanged.
    """
    if e.whiteout:
        return _header(_wh_name(e.name), tarfile.REGTYPE, 0o600, e.uid, e.gid, e.mtime)
    if e.opaque:
        rest = {k: v for k, v in e.xattrs.items() if k != OPAQUE_XATTR}
        return (_header(e.name, e.type, e.mode, e.uid, e.gid, e.mtime, xattrs=rest)
                + _header(_join(e.name, WH_OPAQUE), tarfile.REGTYPE, e.mode & 0o777, e.uid, e.gid, e.mtime))
    return hdr


def _copy_data(e: _Entry, sinks: list[_Sink]) -> None:
    assert e.data is not None
    with e.data() as f:
        left = e.size
        while left:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                raise ValueError(f"{e.name}: shorter than its recorded {e.size} bytes (changed while reading?)")
            for s in sinks:
                s.write(chunk)
            left -= len(chunk)
        if f.read(1):
            raise ValueError(f"{e.name}: longer than its recorded {e.size} bytes (changed while reading?)")
    pad = -e.size % tarfile.BLOCKSIZE
    if pad:
        for s in sinks:
            s.write(bytes(pad))


# ---------------------------------------------------------------------------------------------
# The cache.


def _subdir(name: str) -> Path:
    path = cache_dir() / name
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _stat_id(st: os.stat_result) -> list[int]:
    return [st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, st.st_nlink,
            st.st_uid, st.st_gid]


def _cached(key: list[Any], build: Callable[[], list[Layer]]) -> list[Layer]:
    """Layers recorded under `key`, or `build()` and record them.

    A hit reads one small JSON file and stats the tars (their size must match): no content is read.
    Anything unreadable or inconsistent is treated as a miss and rebuilt.
    """
    blob = json.dumps([FORMAT_VERSION, *key], separators=(",", ":")).encode()
    index = _subdir("index") / f"{hashlib.sha256(blob).hexdigest()}.json"
    layers_dir = _subdir("layers")
    try:
        rows = json.loads(index.read_text())
        layers = []
        for row in rows:
            if not (_DIGEST.fullmatch(row["diff_id"]) and _HEX.fullmatch(row["sha256"])):
                raise ValueError("bad index row")
            layer = Layer(row["diff_id"], layers_dir / f"{row['sha256']}.tar", row["sha256"], int(row["size"]))
            if layer.path.stat().st_size != layer.size:
                raise ValueError("size mismatch")
            layers.append(layer)
        planstore.touch_daily(str(index))
        planstore.mark_used(str(la.path) for la in layers)
        return layers
    except (OSError, ValueError, KeyError, TypeError):
        pass
    layers = build()
    rows = [{"diff_id": la.diff_id, "sha256": la.sha256, "size": la.size} for la in layers]
    _atomic_write(index, lambda f: f.write(json.dumps(rows).encode()))
    _prune()
    return layers


# The cache keeps what was used lately: a hit marks its index file and its tars (planstore's
# touch_daily and mark_used, as a stored plan does), and a miss removes, at most once a day,
# every entry unused for STALE.
STALE = planstore.STALE


def _prune() -> None:
    """Remove what no run used for STALE: index files, layer tars (by their stamps in used/),
    the stamps themselves and temporary leftovers. An index whose tar is gone is a miss,
    rebuilt; a plan stored with it is made again. Once a day (used/.pruned): the cache may
    hold 100,000s of entries, and a deep image's build misses once per layer."""
    used = _subdir("used")
    if not planstore.touch_daily(str(used / ".pruned")):
        return
    old = time.time() - STALE
    for sub in ("index", "layers", "used"):  # tars before their stamps
        with os.scandir(_subdir(sub)) as found:
            for entry in found:
                if _since(entry.path, old) or (sub == "layers" and _since(used / entry.name, old)):
                    continue
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _since(path: str | Path, when: float) -> bool:
    """Whether the file was modified at `when` or later (False when there is none)."""
    try:
        return os.lstat(path).st_mtime >= when
    except OSError:
        return False


def _atomic_write(path: Path, fill: Callable[[IO[bytes]], Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with open(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _store(entries: list[_Entry], diff_id: str | None = None) -> Layer:
    """Write the overlay form into the cache (named by its sha256) and hash the OCI form for the DiffID.

    Imports pass their verified DiffID (the hash of the original blob), so only the overlay form is made.
    """
    layers_dir = _subdir("layers")
    overlay = _Sink()
    oci = _Sink() if diff_id is None else None
    fd, tmp = tempfile.mkstemp(dir=layers_dir, prefix=".tmp-")
    try:
        with open(fd, "wb") as f:
            overlay.out = f
            _write(entries, overlay, oci)
            f.flush()
            os.fsync(f.fileno())
        hexdigest = overlay.hash.hexdigest()
        path = layers_dir / f"{hexdigest}.tar"
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if oci is not None:
        diff_id = "sha256:" + oci.hash.hexdigest()
    assert diff_id is not None
    return Layer(diff_id, path, hexdigest, overlay.size)


# ---------------------------------------------------------------------------------------------
# Reading directories.


def _scan(root: Path) -> list[tuple[str, os.stat_result]]:
    """Every entry under root (not root itself) as (relative path, lstat), in a stable order."""
    out: list[tuple[str, os.stat_result]] = []

    def walk(path: str, prefix: str) -> None:
        with os.scandir(path) as it:
            found = sorted(it, key=lambda d: d.name)
        for d in found:
            st = d.stat(follow_symlinks=False)
            out.append((prefix + d.name, st))
            if stat.S_ISDIR(st.st_mode):
                walk(d.path, prefix + d.name + "/")

    walk(str(root), "")
    return out


def _stat_entry(name: str, path: str, st: os.stat_result, overlay: bool) -> _Entry | None:
    """An entry for a file on disk with its real metadata; None for a socket (tar cannot hold one).

    overlay=True reads the tree as an overlay upper dir: opaque xattrs become opaque entries, and
    redirect/metacopy xattrs (whose meaning lives in lower layers) are refused.
    """
    m = st.st_mode
    e = _Entry(name, mode=stat.S_IMODE(m), uid=st.st_uid, gid=st.st_gid, mtime=st.st_mtime_ns // 10**9)
    if stat.S_ISREG(m):
        e.type, e.size, e.data = tarfile.REGTYPE, st.st_size, functools.partial(open, path, "rb")
    elif stat.S_ISDIR(m):
        e.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(m):
        e.type, e.linkname = tarfile.SYMTYPE, os.readlink(path)
    elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
        e.type = tarfile.CHRTYPE if stat.S_ISCHR(m) else tarfile.BLKTYPE
        e.dev = (os.major(st.st_rdev), os.minor(st.st_rdev))
    elif stat.S_ISFIFO(m):
        e.type = tarfile.FIFOTYPE
    else:
        return None
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        names = []
    for key in names:
        value = functools.partial(_getxattr, path, key)
        if overlay:
            _overlay_xattr(e, key, value, path)
        elif key in WALK_XATTRS:
            e.xattrs[key] = value()
    # Whiteouts are never grouped: overlayfs shares one whiteout inode through hard links (even
    # with the work dir), and each whiteout must stay its own entry.
    if e.type != tarfile.DIRTYPE and not e.whiteout and st.st_nlink > 1:
        e.link_group = (st.st_dev, st.st_ino)
    return e


def _getxattr(path: str, key: str) -> str:
    return os.getxattr(path, key, follow_symlinks=False).decode("utf-8", "surrogateescape")


def _overlay_xattr(e: _Entry, key: str, value: Callable[[], str], where: str) -> None:
    """Apply one xattr of a file in an overlay upper (or layer) dir to its entry.

    security.capability is kept; an opaque marker (trusted. or user.overlay.opaque=y) on a directory
    makes it opaque; redirect/metacopy (whose meaning lives in lower layers) are refused; every other
    xattr, overlayfs's own bookkeeping (origin, impure, uuid, nlink…) included, is dropped.
    """
    if key in WALK_XATTRS:
        e.xattrs[key] = value()
    elif key.split(".", 1)[-1] in ("overlay.redirect", "overlay.metacopy"):
        raise ValueError(f"{where}: has {key}; lamina cannot diff an upper dir made with "
                         "redirect_dir or metacopy (mount with redirect_dir=off,metacopy=off)")
    elif key in (OPAQUE_XATTR, "user.overlay.opaque") and e.type == tarfile.DIRTYPE and value() == "y":
        e.xattrs[OPAQUE_XATTR] = "y"


# ---------------------------------------------------------------------------------------------
# Reading archives.

_BAD_DATA = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError, UnicodeError)


@contextlib.contextmanager
def _bad_input(what: str) -> Iterator[None]:
    """Turn the many ways a corrupt archive fails into one ValueError naming the input."""
    try:
        yield
    except _BAD_DATA as err:
        raise ValueError(f"{what}: not a readable archive ({type(err).__name__}: {err})") from err
    except OSError as err:
        if err.errno is not None:  # a real I/O error (disk full, permission): let it through
            raise
        # gzip.BadGzipFile and bz2's "Invalid data stream" are OSErrors without errno
        raise ValueError(f"{what}: not a readable archive ({err})") from err


def _decompressor(raw: IO[bytes]) -> IO[bytes] | None:
    """A reader of the uncompressed stream, or None when raw is not compressed (by magic bytes)."""
    head = raw.read(6)
    raw.seek(0)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)
    return None


@contextlib.contextmanager
def _open_tar(raw: IO[bytes], what: str, digest: list[str] | None = None) -> Iterator[tarfile.TarFile]:
    """A random-access TarFile over raw (plain or compressed; a compressed stream is spooled to an
    anonymous temp file in the cache dir). With `digest`, appends "sha256:<hex>" of the uncompressed
    stream — the DiffID of a layer blob — computed while reading it once."""
    with _bad_input(what):
        unpacked = _decompressor(raw)
        with contextlib.ExitStack() as stack:
            if unpacked is None:
                plain = raw
                if digest is not None:
                    h = hashlib.sha256()
                    while chunk := raw.read(CHUNK):
                        h.update(chunk)
                    digest.append("sha256:" + h.hexdigest())
                    raw.seek(0)
            else:
                stack.enter_context(unpacked)
                plain = stack.enter_context(tempfile.TemporaryFile(dir=_subdir("tmp")))
                h = hashlib.sha256()
                while chunk := unpacked.read(CHUNK):
                    h.update(chunk)
                    plain.write(chunk)
                plain.seek(0)
                if digest is not None:
                    digest.append("sha256:" + h.hexdigest())
            tf = stack.enter_context(tarfile.open(fileobj=plain, mode="r:", encoding="utf-8",
                                                  errors="surrogateescape"))
            tf.getmembers()  # read every header now: a broken archive fails here, inside _bad_input
            # tarfile takes a bad or cut header after the first member for the end of the archive;
            # GNU tar would fail there. What follows the last member must be zero blocks or nothing.
            plain.seek(tf.offset)
            rest = plain.read(tarfile.BLOCKSIZE)
            if rest and rest != bytes(tarfile.BLOCKSIZE):
                raise ValueError(f"{what}: corrupt or truncated tar after byte {tf.offset}")
            yield tf


def _mtime(m: tarfile.TarInfo) -> int:
    """A member's mtime in whole seconds, rounded down like `st_mtime_ns // 10**9`.

    Read from the exact decimal of a PAX record when there is one: tarfile's float cannot tell
    1700000000.999999999 from 1700000001 (GNU tar --format=posix writes nanoseconds).
    """
    raw = m.pax_headers.get("mtime")
    if raw is not None:
        with contextlib.suppress(ArithmeticError, ValueError):
            return math.floor(decimal.Decimal(raw))
    return math.floor(m.mtime)


def _content_of(m: tarfile.TarInfo, latest: dict[str, tarfile.TarInfo], what: str) -> tarfile.TarInfo:
    """The member holding a hard link's content (for anything else, the member itself)."""
    if not m.islnk():
        return m
    found = latest.get(_clean(m.linkname, what))
    if found is None:
        raise ValueError(f"{what}: hard link {m.name!r} points to {m.linkname!r}, "
                         "which is not an earlier entry of the archive")
    if found.isdir():
        raise ValueError(f"{what}: hard link {m.name!r} points to directory {m.linkname!r}")
    return found


def _member_entry(tf: tarfile.TarFile, name: str, m: tarfile.TarInfo, what: str, upper: bool = False) -> _Entry:
    """An entry for an archive member. upper=True reads a tar of an overlay upper/layer dir: its
    xattrs go through _overlay_xattr, exactly as oci_tar_from_overlay_dir reads them from disk."""
    e = _Entry(name, mode=m.mode & 0o7777, uid=m.uid, gid=m.gid, mtime=_mtime(m))
    if m.isreg():  # also old-style regular, contiguous and GNU sparse files: written out dense
        e.type, e.size = tarfile.REGTYPE, m.size
        e.data = functools.partial(tf.extractfile, m)  # type: ignore[assignment]
    elif m.isdir():
        e.type = tarfile.DIRTYPE
    elif m.issym():
        e.type, e.linkname = tarfile.SYMTYPE, m.linkname
    elif m.ischr() or m.isblk() or m.isfifo():
        e.type, e.dev = m.type, (m.devmajor, m.devminor)
    else:
        raise ValueError(f"{what}: entry {m.name!r} has unsupported tar type {m.type!r}")
    # xattrs are kept as the archive has them, except overlayfs's own: lamina alone writes those.
    for key, value in m.pax_headers.items():
        if key.startswith(XATTR_PAX):
            xname = key[len(XATTR_PAX):]
            if upper:
                _overlay_xattr(e, xname, lambda v=value: v, f"{what}: entry {m.name!r}")
            elif not xname.startswith(("trusted.overlay.", "user.overlay.")):
                e.xattrs[xname] = value
    return e


@dataclass
class _Read:
    entries: dict[str, _Entry] = field(default_factory=dict)
    whiteouts: dict[str, tarfile.TarInfo] = field(default_factory=dict)  # path deleted from lower layers
    opaque: set[str] = field(default_factory=set)  # dirs whose lower content is hidden


def _read_archive(tf: tarfile.TarFile, what: str, prefix: str = "", oci: bool = False) -> _Read:
    """Members as entries under prefix, the last of duplicate names winning (as extraction would).

    oci=True reads a layer changeset: `.wh.` names are whiteouts. oci=False (Docker ADD) keeps them
    as ordinary files — moby's Unpack does not interpret whiteouts — and skips the archive's own
    root entry, since ADD leaves dest's metadata alone.
    """
    out = _Read()
    latest: dict[str, tarfile.TarInfo] = {}  # archive path → member holding its content now
    for m in tf.getmembers():
        rel = _clean(m.name, what)
        if oci:
            parent, base = posixpath.split(rel)
            if base == WH_OPAQUE:
                out.opaque.add(parent)
                continue
            if base.startswith(WH_META):
                continue
            if base.startswith(WH_PREFIX):
                out.whiteouts[_join(parent, base[len(WH_PREFIX):])] = m
                continue
        elif not rel:
            continue
        data = _content_of(m, latest, what)
        latest[rel] = data
        name = _join(prefix, rel)
        e = _member_entry(tf, name, data, what)
        if e.type != tarfile.DIRTYPE and not e.whiteout:
            e.link_group = data  # hard links resolve to the member that holds their content
        out.entries[name] = e
    return out


def _overlay_from_oci(tf: tarfile.TarFile, what: str) -> list[_Entry]:
    """An OCI-form layer changeset → overlay-form entries."""
    read = _read_archive(tf, what, oci=True)
    entries, opaque = read.entries, set(read.opaque)
    _add_parents(entries)
    for target, marker in read.whiteouts.items():
        found = entries.get(target)
        if found is None:
            entries[target] = _Entry(target, tarfile.CHRTYPE, mode=0, mtime=_mtime(marker))
        elif found.type == tarfile.DIRTYPE:
            # Deleted from the lower layers and re-created here: in overlayfs that is an opaque dir.
            opaque.add(target)
        # else: a whiteout applies to lower layers only, and this layer's own file hides those anyway
    for d in sorted(opaque):
        if not d:
            # Measured on kernel 6.18: overlayfs ignores the opaque xattr on a lower layer's root.
            raise ValueError(f"{what}: opaque whiteout of the layer root (./{WH_OPAQUE}) cannot be "
                             "expressed for overlayfs; flatten the image first")
        found = entries.get(d)
        if found is None:
            found = entries[d] = _Entry(d)
        elif found.type != tarfile.DIRTYPE:
            raise ValueError(f"{what}: {d}/{WH_OPAQUE} but {d!r} is not a directory in this layer")
        found.xattrs[OPAQUE_XATTR] = "y"
    _add_parents(entries)
    return _sorted(entries)


# ---------------------------------------------------------------------------------------------
# Public API: build steps.


def _dest_path(dest: str) -> str:
    return _clean(dest, "dest")


def _source_stat(src: Path, what: str) -> os.stat_result:
    try:
        return src.stat()
    except FileNotFoundError:
        raise ValueError(f"{what} {src} does not exist") from None


def from_directory(src: Path, dest: str, mode: int | None = None, owner: tuple[int, int] | None = None) -> Layer:
    """Docker `COPY src dest` as one layer.

    A directory's contents go into dest (dest itself becomes a directory, 0755 or `mode`); a file
    lands at dest, or at dest/<name> when dest ends with "/". Everything copied gets mtime 0, owner
    `owner` or 0:0, and its own permission bits unless `mode` is given (then every copied file and
    directory gets `mode`, as BuildKit's --chmod does; symlinks keep theirs). Missing parents of dest
    are 0755 0:0. Symlinks are copied as symlinks; src itself is followed if it is one. Only the
    security.capability xattr is copied; sockets are skipped.
    """
    src = Path(src)
    planstore.note(src, tree=True)
    st = _source_stat(src, "copy source")
    real = src.resolve()
    if mode is not None and not 0 <= mode <= 0o7777:
        raise ValueError(f"mode {mode:o} is not a permission mode")
    if owner is not None and (len(owner) != 2 or min(owner) < 0):
        raise ValueError(f"owner {owner!r} must be (uid, gid), both >= 0")
    base = _dest_path(dest)
    scan = _scan(real) if stat.S_ISDIR(st.st_mode) else [("", st)]
    key = ["from_directory", str(real), dest, mode, owner, [[rel, _stat_id(s)] for rel, s in scan]]

    def build() -> list[Layer]:
        entries: dict[str, _Entry] = {}
        if stat.S_ISDIR(st.st_mode):
            if base:
                entries[base] = _Entry(base)
            for rel, s in scan:
                e = _stat_entry(_join(base, rel), os.path.join(real, rel), s, overlay=False)
                if e is not None:
                    entries[e.name] = e
        else:
            target = _join(base, real.name) if dest.endswith("/") else base
            if not target:
                raise ValueError(f"copy of file {src} needs a file path as dest, not {dest!r}")
            e = _stat_entry(target, str(real), st, overlay=False)
            if e is None:
                raise ValueError(f"copy source {src} is a socket")
            entries[target] = e
        for e in entries.values():
            e.uid, e.gid = owner or (0, 0)
            e.mtime = 0
            if mode is not None and e.type != tarfile.SYMTYPE:
                e.mode = mode
        _add_parents(entries)
        return [_store(_sorted(entries))]

    return _cached(key, build)[0]


def from_archive(src: Path, dest: str = "/") -> Layer:
    """Docker `ADD local.tar dest` as one layer: the archive (plain, gzip, bzip2, xz or zstd) unpacked at dest.

    Entries are re-rooted under dest and keep their metadata (mtime truncated to whole seconds, uid/gid,
    mode, xattrs except trusted.overlay.*); dest and its missing parents are 0755 0:0, and so is any
    directory the archive leaves implicit. `.wh.*` entries are ordinary files here, as in Docker ADD
    (note: a consumer of the OCI form would read them as whiteouts, exactly as with Docker's own layers).
    A character device 0/0 in the archive is a whiteout once it lies in an overlay layer, so it is
    written as one in both forms (Docker's overlay2 diff would do the same).
    """
    src = Path(src)
    planstore.note(src)
    st = _source_stat(src, "archive")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"archive {src} is not a file")
    base = _dest_path(dest)
    key = ["from_archive", str(src.resolve()), _stat_id(st), base]

    def build() -> list[Layer]:
        what = str(src)
        with open(src, "rb") as raw, _open_tar(raw, what) as tf, _bad_input(what):
            entries = _read_archive(tf, what, prefix=base).entries
            if base:
                entries[base] = _Entry(base)
            _add_parents(entries)
            return [_store(_sorted(entries))]

    return _cached(key, build)[0]


# ---------------------------------------------------------------------------------------------
# Public API: image imports.


class _DirBlobs:
    def __init__(self, root: Path, what: str):
        self.root, self.what = root, what

    def open(self, rel: str) -> IO[bytes]:
        path = self.root / _clean(rel, self.what)
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise ValueError(f"{self.what}: {rel} is missing") from None


class _TarBlobs:
    def __init__(self, tf: tarfile.TarFile, what: str):
        self.tf, self.what = tf, what
        self.members = {_clean(m.name, what): m for m in tf.getmembers()}

    def open(self, rel: str) -> IO[bytes]:
        m = self.members.get(_clean(rel, self.what))
        try:
            f = self.tf.extractfile(m) if m is not None else None  # follows symlinks (old docker save)
        except KeyError:
            f = None
        if f is None:
            raise ValueError(f"{self.what}: {rel} is missing or not a file")
        return f


_Blobs = _DirBlobs | _TarBlobs


def _json(blobs: _Blobs, rel: str, what: str, digest: str | None = None) -> Any:
    with blobs.open(rel) as f:
        data = f.read()
    if digest and digest.startswith("sha256:") and "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise ValueError(f"{what}: {rel} does not match its digest {digest}")
    try:
        return json.loads(data)
    except ValueError as err:
        raise ValueError(f"{what}: {rel} is not valid JSON ({err})") from None


def _diff_ids(config: Any, what: str) -> list[str]:
    try:
        ids = config["rootfs"]["diff_ids"]
    except (KeyError, TypeError):
        raise ValueError(f"{what}: image config has no rootfs.diff_ids") from None
    if not isinstance(ids, list) or not all(isinstance(d, str) and _DIGEST.fullmatch(d) for d in ids):
        raise ValueError(f"{what}: rootfs.diff_ids must be a list of sha256:<hex> strings")
    return ids


def _docker_image(blobs: _Blobs, what: str) -> list[tuple[str, str]]:
    manifest = _json(blobs, "manifest.json", what)
    if not isinstance(manifest, list) or len(manifest) != 1:
        n = len(manifest) if isinstance(manifest, list) else "no"
        raise ValueError(f"{what}: manifest.json lists {n} images; lamina imports exactly one")
    try:
        config_rel, layers = manifest[0]["Config"], manifest[0]["Layers"]
    except (KeyError, TypeError):
        raise ValueError(f"{what}: manifest.json entry lacks Config or Layers") from None
    ids = _diff_ids(_json(blobs, config_rel, what), what)
    if len(ids) != len(layers):
        raise ValueError(f"{what}: manifest lists {len(layers)} layers but the config {len(ids)} diff_ids")
    return list(zip(layers, ids, strict=True))


_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


def _blob_path(descriptor: Any, what: str) -> tuple[str, str]:
    digest = descriptor.get("digest", "") if isinstance(descriptor, dict) else ""
    alg, _, enc = digest.partition(":")
    if not (re.fullmatch(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*", alg) and re.fullmatch(r"[a-zA-Z0-9=_-]+", enc)):
        raise ValueError(f"{what}: descriptor has a bad digest {digest!r}")
    return f"blobs/{alg}/{enc}", digest


def _oci_image(blobs: _Blobs, what: str) -> list[tuple[str, str]]:
    found: list[tuple[Any, Any]] = []  # (descriptor, manifest)

    def collect(index: Any, depth: int) -> None:
        if depth > 4 or not isinstance(index, dict):
            raise ValueError(f"{what}: index.json nests too deep or is not an object")
        for desc in index.get("manifests") or []:
            rel, digest = _blob_path(desc, what)
            doc = _json(blobs, rel, what, digest)
            if isinstance(doc, dict) and "manifests" in doc:
                collect(doc, depth + 1)
            elif isinstance(doc, dict) and "layers" in doc:
                found.append((desc, doc))

    collect(_json(blobs, "index.json", what), 0)
    if len(found) > 1:  # multi-platform: keep this machine's (also drops attestation manifests)
        arch = _ARCH.get(platform.machine(), platform.machine())
        found = [(d, m) for d, m in found
                 if (d.get("platform") or {}).get("os") == "linux" and d["platform"].get("architecture") == arch]
    if len(found) != 1:
        raise ValueError(f"{what}: found {len(found)} matching image manifests; lamina imports exactly one")
    manifest = found[0][1]
    rel, digest = _blob_path(manifest.get("config"), what)
    ids = _diff_ids(_json(blobs, rel, what, digest), what)
    layers = [_blob_path(desc, what)[0] for desc in manifest["layers"]]
    if len(ids) != len(layers):
        raise ValueError(f"{what}: manifest lists {len(layers)} layers but the config {len(ids)} diff_ids")
    return list(zip(layers, ids, strict=True))


def _import(path: Path, kind: str, image: Callable[[_Blobs, str], list[tuple[str, str]]]) -> list[Layer]:
    path = Path(path)
    planstore.note(path, tree=True)
    st = _source_stat(path, kind)
    real = path.resolve()
    what = f"{kind} {path}"
    if stat.S_ISDIR(st.st_mode):
        key = [kind, str(real), [[rel, _stat_id(s)] for rel, s in _scan(real)]]
    else:
        key = [kind, str(real), _stat_id(st)]

    def convert(blobs: _Blobs) -> list[Layer]:
        out = []
        for i, (rel, want) in enumerate(image(blobs, what)):
            where = f"{what} layer {i} ({rel})"
            got: list[str] = []
            with blobs.open(rel) as raw, _open_tar(raw, where, got) as tf, _bad_input(where):
                if got[0] != want:
                    raise ValueError(f"{where}: uncompressed content has DiffID {got[0]} "
                                     f"but the image config says {want}")
                out.append(_store(_overlay_from_oci(tf, where), diff_id=want))
        return out

    def build() -> list[Layer]:
        if stat.S_ISDIR(st.st_mode):
            return convert(_DirBlobs(real, what))
        with open(real, "rb") as raw, _open_tar(raw, what) as tf:
            return convert(_TarBlobs(tf, what))

    return _cached(key, build)


def from_docker_archive(path: Path) -> list[Layer]:
    """The layers of a `docker save` archive (manifest.json + config + layer tars), lowest first.

    The archive and its layers may be plain or compressed; each layer's DiffID is checked against the
    config's rootfs.diff_ids. Whiteouts in the layers become overlay form.
    """
    return _import(path, "docker-archive", _docker_image)


def from_oci_archive(path: Path) -> list[Layer]:
    """The layers of a tar of an OCI image layout (`skopeo copy … oci-archive:`), lowest first."""
    return _import(path, "oci-archive", _oci_image)


def from_oci_layout(path: Path) -> list[Layer]:
    """The layers of a directory holding an OCI image layout (index.json, blobs/sha256/…), lowest first.

    A multi-platform index is narrowed to linux/<this machine's architecture>.
    """
    if not Path(path).is_dir():
        raise ValueError(f"oci-layout {path} is not a directory")
    return _import(path, "oci-layout", _oci_image)


# ---------------------------------------------------------------------------------------------
# Public API: identities and the reverse conversion.


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """OCI ChainIDs of each prefix of the stack: ChainID(L0) = DiffID(L0),
    ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln)), over the "sha256:<hex>" strings."""
    out: list[str] = []
    for d in diff_ids:
        if not _DIGEST.fullmatch(d):
            raise ValueError(f"{d!r} is not a sha256:<64 hex> DiffID")
        out.append(d if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def _read_upper_tar(tf: tarfile.TarFile, what: str) -> dict[str, _Entry]:
    """A tar of an overlay upper or layer dir → the entries oci_tar_from_overlay_dir would read from
    that dir: the dir itself is no entry, whiteouts are the char devices 0/0, hard links are groups
    (a hard link to a whiteout is a whiteout of its own, as whiteouts are never grouped)."""
    entries: dict[str, _Entry] = {}
    latest: dict[str, tarfile.TarInfo] = {}  # archive path → member holding its content now
    for m in tf.getmembers():
        rel = _clean(m.name, what)
        data = _content_of(m, latest, what)
        latest[rel] = data
        if not rel:
            continue  # the upper dir itself (GNU tar's "./"): its metadata is not layer content
        e = _member_entry(tf, rel, data, what, upper=True)
        if e.type != tarfile.DIRTYPE and not e.whiteout:
            e.link_group = data
        entries[rel] = e
    _add_parents(entries)
    return entries


def from_overlay_tar(path: Path) -> Layer:
    """A tar of an overlay upper dir or layer dir, made on a host by GNU tar, as a layer.

    Expected: `tar -C DIR --xattrs --xattrs-include='trusted.overlay.*' --xattrs-include=security.capability
    --numeric-owner --format=posix -cf - .` (plain or compressed). The result is exactly what
    oci_tar_from_overlay_dir(DIR) describes: same DiffID, with the overlay form as `path`: whiteouts
    (char devices 0/0) and opaque dirs (trusted.overlay.opaque=y, or user.overlay.opaque=y) kept,
    mtimes in whole seconds (rounded down), owners and modes as archived, only security.capability of
    the xattrs (overlayfs's origin/impure/… are dropped), the dir itself not an entry. redirect or
    metacopy xattrs raise ValueError. Cached like the other build steps, by the tar's identity.
    """
    src = Path(path)
    st = _source_stat(src, "overlay tar")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"overlay tar {src} is not a file")
    key = ["from_overlay_tar", str(src.resolve()), _stat_id(st)]

    def build() -> list[Layer]:
        what = str(src)
        with open(src, "rb") as raw, _open_tar(raw, what) as tf, _bad_input(what):
            return [_store(_sorted(_read_upper_tar(tf, what)))]

    return _cached(key, build)[0]


def oci_tar_from_overlay_dir(root: Path, out: IO[bytes]) -> str:
    """A directory in overlay form (e.g. an overlay upper dir) → its OCI-form layer tar, written to `out`.

    Char devices 0/0 become `.wh.NAME`, dirs with trusted.overlay.opaque=y (or user.overlay.opaque=y)
    get a `.wh..wh..opq`; real metadata is kept (mtime in whole seconds), the root dir itself is not
    an entry, only security.capability of the xattrs is carried. Returns the DiffID "sha256:<hex>".
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory")
    entries: dict[str, _Entry] = {}
    for rel, st in _scan(root):
        e = _stat_entry(rel, os.path.join(root, rel), st, overlay=True)
        if e is not None:
            entries[rel] = e
    sink = _Sink(out)
    _write(_sorted(entries), None, sink)
    return "sha256:" + sink.hash.hexdigest()


# ---------------------------------------------------------------------------------------------
# Public API: export of an image (layers, lowest first) to archives `docker load` and OCI tools read.

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
EPOCH = "1970-01-01T00:00:00Z"  # `created` of exported images: the same layers give the same image ID

_REF_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REF_DOMAIN = r"(?:localhost|[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)+)(?::[0-9]+)?|[a-zA-Z0-9-]+:[0-9]+"
_DOCKER_REF = re.compile(rf"((?:(?:{_REF_DOMAIN})/)?{_REF_PART}(?:/{_REF_PART})*)(?::([\w][\w.-]{{0,127}}))?")


def _docker_ref(ref: str) -> tuple[str, str] | None:
    """(repository, tag) of a Docker "name[:tag]" reference (tag "latest" if absent), or None."""
    m = _DOCKER_REF.fullmatch(ref)
    if m is None or len(m.group(1)) > 255:
        return None
    return m.group(1), m.group(2) or "latest"


def _oci_from_layer(layer: Layer, sink: _Sink) -> None:
    """Stream the OCI form of `layer`, converted from its overlay-form tar, into sink; check the DiffID.

    The overlay form is lamina's own output, so each member is re-encoded with the same _header()
    that wrote it and converted by the same _oci_header() that _write() uses: for a layer lamina
    built, the bytes are exactly the OCI form whose hash is its DiffID. Reads the file once.
    """
    if not _DIGEST.fullmatch(layer.diff_id):
        raise ValueError(f"layer {layer.path}: {layer.diff_id!r} is not a sha256:<64 hex> DiffID")
    what = f"layer {layer.diff_id} ({layer.path})"
    with open(layer.path, "rb") as raw, _bad_input(what), \
            tarfile.open(fileobj=raw, mode="r:", encoding="utf-8", errors="surrogateescape") as tf:
        for m in tf:
            name = _clean(m.name, what)
            mode, mtime = m.mode & 0o7777, _mtime(m)
            if m.islnk():
                sink.write(_header(name, tarfile.LNKTYPE, mode, m.uid, m.gid, mtime, linkname=m.linkname))
                continue
            xattrs = {k[len(XATTR_PAX):]: v for k, v in m.pax_headers.items() if k.startswith(XATTR_PAX)}
            e = _Entry(name, m.type, mode, m.uid, m.gid, mtime, m.size if m.isreg() else 0, m.linkname,
                       (m.devmajor, m.devminor), xattrs, functools.partial(tf.extractfile, m))  # type: ignore[arg-type]
            sink.write(_oci_header(e, _header(e.name, e.type, e.mode, e.uid, e.gid, e.mtime, e.size, e.linkname,
                                              e.dev, e.xattrs)))
            if e.type == tarfile.REGTYPE and e.size:
                _copy_data(e, [sink])
    sink.write(bytes(1024))
    got = "sha256:" + sink.hash.hexdigest()
    if got != layer.diff_id:
        raise ValueError(f"{what}: the OCI form regenerated from the overlay form has DiffID {got}. A layer "
                         "imported from an image whose layer tars are not in lamina's canonical form cannot "
                         "be written back byte for byte; only layers lamina built can be exported")


def _archive_header(name: str, size: int = 0, directory: bool = False) -> bytes:
    """A one-block header of an image archive member: 0644 files, 0755 dirs, 0:0, mtime 0.

    ustar, or GNU base-256 for a size of 8 GiB or more (Go's archive/tar reads both), so a header
    written before its layer's size is known can be rewritten in place."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.size, info.mtime, info.uname, info.gname = size, 0, "", ""
    buf = info.tobuf(tarfile.USTAR_FORMAT if size < 8**11 else tarfile.GNU_FORMAT, "utf-8", "strict")
    assert len(buf) == tarfile.BLOCKSIZE, name
    return buf


class _ImageTar:
    """An image archive written member by member into a seekable file."""

    def __init__(self, f: IO[bytes]):
        self.f = f
        self.sizes: dict[str, int] = {}  # layer member → size of its OCI tar

    def dir(self, name: str) -> None:
        self.f.write(_archive_header(name, directory=True))

    def file(self, name: str, data: bytes) -> None:
        self.f.write(_archive_header(name, len(data)) + data + bytes(-len(data) % tarfile.BLOCKSIZE))

    def layer(self, name: str, layer: Layer) -> int:
        """Stream the layer's OCI tar in as `name` (once: a repeated name is not written again)."""
        if name not in self.sizes:
            start = self.f.tell()
            self.f.write(_archive_header(name))  # size not known yet: rewritten below
            sink = _Sink(self.f)
            _oci_from_layer(layer, sink)
            end = self.f.tell()
            self.f.seek(start)
            self.f.write(_archive_header(name, sink.size))
            self.f.seek(end)
            self.f.write(bytes(-sink.size % tarfile.BLOCKSIZE))
            self.sizes[name] = sink.size
        return self.sizes[name]

    def close(self) -> None:
        self.f.write(bytes(1024))


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _image_config(layers: Sequence[Layer], config: dict | None) -> bytes:
    """The image config JSON (canonical: sorted keys, no spaces) of a stack of layers."""
    for la in layers:
        if not _DIGEST.fullmatch(la.diff_id):
            raise ValueError(f"layer {la.path}: {la.diff_id!r} is not a sha256:<64 hex> DiffID")
    if config is not None and not isinstance(config, dict):
        raise ValueError("config must be a dict (the image config's `config` object: Env, Cmd, …)")
    return _dumps({
        "architecture": _ARCH.get(platform.machine(), platform.machine()),
        "config": config or {},
        "created": EPOCH,
        "history": [{"created": EPOCH, "created_by": "lamina"} for _ in layers],
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [la.diff_id for la in layers]},
    })


def write_docker_archive(layers: Sequence[Layer], out: Path, repo_tag: str, config: dict | None = None) -> str:
    """Write the image made of `layers` (lowest first) as a `docker save` archive; returns its image ID.

    Layout as Docker 20.10's `docker save`: `<hex>/layer.tar` (uncompressed OCI-form tar, named here by
    its DiffID), `<id-hex>.json` (the config), `manifest.json` (Config, RepoTags, Layers) and the legacy
    `repositories`. repo_tag is "name[:tag]" ("latest" if no tag). The config has architecture (this
    machine's), os linux, `config` (the given dict or {}), created 1970-01-01 (so the ID depends on the
    layers and config alone), one history entry per layer and rootfs.diff_ids. The image ID is
    "sha256:" + the config's sha256. Layers are converted from their overlay form while written, and
    each one's hash must equal its DiffID (ValueError otherwise). `out` appears whole or not at all.
    """
    parsed = _docker_ref(repo_tag)
    if parsed is None:
        raise ValueError(f"{repo_tag!r} is not a Docker repository[:tag] (lowercase name, no digest)")
    repo, tag = parsed
    cfg = _image_config(layers, config)
    image_hex = hashlib.sha256(cfg).hexdigest()

    def fill(f: IO[bytes]) -> None:
        w = _ImageTar(f)
        rels = []
        for la in layers:
            hex_ = la.diff_id.removeprefix("sha256:")
            rel = f"{hex_}/layer.tar"
            if rel not in w.sizes:
                w.dir(hex_)
                w.layer(rel, la)
            rels.append(rel)
        w.file(f"{image_hex}.json", cfg)
        w.file("manifest.json", _dumps([{"Config": f"{image_hex}.json", "Layers": rels,
                                         "RepoTags": [f"{repo}:{tag}"]}]))
        if layers:
            w.file("repositories", _dumps({repo: {tag: layers[-1].diff_id.removeprefix("sha256:")}}))
        w.close()

    _atomic_write(Path(out), fill)
    return "sha256:" + image_hex


def write_oci_archive(layers: Sequence[Layer], out: Path, ref: str, config: dict | None = None) -> str:
    """Write the image made of `layers` (lowest first) as a tar of an OCI image layout; returns the
    manifest digest.

    `oci-layout`, `index.json` (one manifest, annotated org.opencontainers.image.ref.name=ref: what
    `skopeo copy oci-archive:OUT:REF` looks up), and `blobs/sha256/`: the manifest, the config (the
    same as write_docker_archive's, so the same image ID) and each layer as an uncompressed
    `application/vnd.oci.image.layer.v1.tar`. Like Docker 25's `docker save`, it also holds a
    `manifest.json` pointing into blobs/, which makes it a docker-archive too (`docker load` accepts
    it; RepoTags is [ref] when ref is a valid Docker name[:tag], else empty: loaded untagged).
    Streaming and DiffID checks as for write_docker_archive.
    """
    if not ref or "\n" in ref:
        raise ValueError(f"{ref!r} is not an image reference")
    cfg = _image_config(layers, config)
    cfg_digest = "sha256:" + hashlib.sha256(cfg).hexdigest()
    docker = _docker_ref(ref)
    digest: list[str] = []

    def fill(f: IO[bytes]) -> None:
        w = _ImageTar(f)
        w.file("oci-layout", _dumps({"imageLayoutVersion": "1.0.0"}))
        w.dir("blobs")
        w.dir("blobs/sha256")
        descs, rels = [], []
        for la in layers:
            rel = "blobs/sha256/" + la.diff_id.removeprefix("sha256:")
            descs.append({"mediaType": OCI_LAYER, "digest": la.diff_id, "size": w.layer(rel, la)})
            rels.append(rel)
        cfg_rel = "blobs/sha256/" + cfg_digest.removeprefix("sha256:")
        w.file(cfg_rel, cfg)
        manifest = _dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": cfg_digest, "size": len(cfg)},
                           "layers": descs})
        digest.append("sha256:" + hashlib.sha256(manifest).hexdigest())
        w.file("blobs/sha256/" + digest[0].removeprefix("sha256:"), manifest)
        w.file("index.json", _dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": digest[0], "size": len(manifest), "annotations": {REF_NAME: ref}}]}))
        w.file("manifest.json", _dumps([{"Config": cfg_rel, "Layers": rels,
                                         "RepoTags": [f"{docker[0]}:{docker[1]}"] if docker else []}]))
        w.close()

    _atomic_write(Path(out), fill)
    return digest[0]
