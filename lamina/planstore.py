"""Plans remembered between runs: a re-run of an unchanged spec skips rendering,
validating and planning, and the imports behind them (YAML, pydantic, Jinja2) — most of a
no-op run's time on the controller.

An entry is keyed by everything planning reads besides files (lamina's own code, the
specs named, every host's inventory data, the flags, the working directory and
environment), and records the files it read with their stat signatures: the spec files,
image sources (whole trees for copied directories) and the cached layer tars. Any of
them changed, missing or new, and the entry is not used. Entries live in the 0700 cache
directory, one per inventory selection and specs.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

try:  # CPython's own sha256 for these few small digests: hashlib loads OpenSSL and blake2 first
    from _sha256 import sha256  # (~25 ms here, on the in-sync re-run's path) — 3.11; 3.12 renamed it
except ImportError:  # pragma: no cover - depends on the interpreter
    try:
        from _sha2 import sha256
    except ImportError:
        from hashlib import sha256

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

_noted: dict[str, Any] | None = None  # path → signature, while planning is recorded
ENV = ("HOME", "LAMINA_CACHE_DIR", "LAMINA_IMAGES")
DAY = 86400
STALE = 14 * DAY  # entries unused this long are removed
FORMAT = 2  # of a stored entry: another is planned afresh
SMALL = 256 << 10  # files up to this size are compared by content (a spec rewritten within one clock tick)


def signature(path: str, tree: bool = False) -> Any:
    """What changes when the file does: its stat identity (None when missing), and the
    content of a small file; with `tree`, that of everything under a directory as well
    (lstat: links are not followed)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    sig: Any = [st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
    if stat.S_ISREG(st.st_mode) and st.st_size <= SMALL:
        try:
            with open(path, "rb") as f:
                sig.append(sha256(f.read()).hexdigest())
        except OSError:
            return None
    if tree and stat.S_ISDIR(st.st_mode):
        h = sha256()
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(dirs + files):
                e = os.lstat(os.path.join(root, name))
                h.update(f"{root}/{name}\0{e.st_mode} {e.st_size} {e.st_mtime_ns} {e.st_ctime_ns} {e.st_ino}\0"
                         .encode(errors="surrogateescape"))
        sig.append(h.hexdigest())
    return sig


def note(path: str | Path, tree: bool = False) -> None:
    """Planning read this file (or directory tree): a changed one makes the entry stale."""
    if _noted is not None:
        _noted[f"{'tree:' if tree else ''}{os.path.abspath(path)}"] = signature(str(path), tree)


@contextmanager
def recording() -> Iterator[dict[str, Any]]:
    global _noted
    _noted = {}
    try:
        yield _noted
    finally:
        _noted = None


def _code() -> list[Any]:
    """lamina's own code and templates: a changed lamina plans (and compares) differently."""
    root = os.path.dirname(os.path.abspath(__file__))
    files = []
    for folder, keep in ((root, ".py"), (os.path.join(root, "sh"), ""),
                         (os.path.join(os.path.dirname(root), "templates"), "")):
        try:
            files += [os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(keep)]
        except OSError:
            pass
    return [sys.version, *((p, (st := os.stat(p)).st_mtime_ns, st.st_size) for p in sorted(files))]


def key(hosts: list[tuple[str, dict[str, Any]]], specs: list[str], flags: dict[str, bool]) -> str | None:
    try:
        blob = json.dumps([_code(), os.getcwd(), [os.path.abspath(s) for s in specs], hosts, flags,
                           [os.environ.get(k) for k in ENV]], sort_keys=True)
    except (TypeError, ValueError):
        return None  # host data JSON cannot express: plan afresh every time
    return sha256(blob.encode()).hexdigest()


def _path(key: str) -> str:
    from . import cache_path

    return os.path.join(cache_path(), "plans", f"{key}.pickle")


class Entry:
    """One stored planning: the plans, their fact commands, and for each host that was in
    sync, the digest of its fact output with what the comparison found unchanged (and
    warned about). Comparing a plan with a host is a pure function of the two, so
    byte-identical output gives that same in-sync result without comparing again.

    The plans are kept pickled apart and unpickled only when asked for: the in-sync
    re-run (lamina/fastpath.py) needs only the commands and the digests, and so never
    imports the planner's classes."""

    def __init__(self, key: str | None, inputs: dict[str, Any], plans: dict[str, Any] | None = None,
                 blob: bytes | None = None, commands: dict[str, str] | None = None,
                 synced: dict[str, tuple[str, list[str], list[str]]] | None = None):
        self.key, self.inputs, self._plans, self._blob = key, inputs, plans, blob
        self.commands = commands if commands is not None else {}
        self.synced = synced if synced is not None else {}
        self.dirty = blob is None

    @property
    def plans(self) -> dict[str, Any]:
        if self._plans is None:
            self._plans = pickle.loads(self._blob)
        return self._plans

    def command(self, name: str) -> str:
        if name not in self.commands:
            from . import facts

            self.commands[name], self.dirty = facts.command(self.plans[name]), True
        return self.commands[name]

    def known(self, name: str, output: str):
        """The in-sync result (report.Result) stored for exactly this fact output of this
        host, or None."""
        memo = self.synced.get(name)
        if memo is None or memo[0] != _digest(output):
            return None
        from .report import Result

        return Result(unchanged=list(memo[1]), warnings=list(memo[2]))

    def remember(self, name: str, output: str, result) -> None:
        """Store an in-sync result (nothing to change, no error) for this fact output."""
        memo = (_digest(output), list(result.unchanged), list(result.warnings))
        if self.synced.get(name) != memo:
            self.synced[name], self.dirty = memo, True

    def save(self) -> None:
        if self.key is None or not self.dirty:
            return
        if self._blob is None:
            for p in self.plans.values():  # the layer tars a run would ship
                for ref in p.layers.values():
                    if ref.layer is not None:
                        self.inputs[os.path.abspath(ref.layer.path)] = signature(str(ref.layer.path))
            self._blob = pickle.dumps(self.plans, protocol=pickle.HIGHEST_PROTOCOL)
        path = _path(self.key)
        stored = {"format": FORMAT, "key": self.key, "inputs": self.inputs, "commands": self.commands,
                  "synced": self.synced, "plans": self._blob}
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                pickle.dump(stored, f, protocol=pickle.HIGHEST_PROTOCOL)
            new = not os.path.exists(path)
            os.replace(tmp, path)
            if new:  # a new entry (rare): drop those of specs no longer run (thousands: ~20 ms to list)
                with os.scandir(os.path.dirname(path)) as found:
                    for old in found:
                        if old.stat().st_mtime < time.time() - STALE:
                            os.unlink(old.path)
        except OSError:
            pass  # a read-only cache: plan afresh next time
        self.dirty = False


def _digest(output: str) -> str:
    return sha256(output.encode(errors="surrogateescape")).hexdigest()


def load(key: str | None) -> Entry | None:
    """The entry stored under `key` if every file its plans came from is unchanged, else None."""
    if key is None:
        return None
    try:
        with open(_path(key), "rb") as f:
            stored = pickle.load(f)
        if stored["format"] != FORMAT or stored["key"] != key:
            return None
        entry = Entry(key, stored["inputs"], blob=stored["plans"], commands=stored["commands"],
                      synced=stored["synced"])
    except Exception:  # missing, truncated, or from another lamina: plan afresh
        return None
    for name, sig in entry.inputs.items():
        if signature(name.removeprefix("tree:"), name.startswith("tree:")) != sig:
            return None
    if touch_daily(_path(key)):  # in use: not swept as stale (a hit is not saved again), nor
        layers = os.path.dirname(_path(key)).removesuffix("plans") + "layers"  # the tars it ships
        mark_used(name for name in entry.inputs if os.path.dirname(name) == layers)
    return entry


def touch_daily(path: str) -> bool:
    """Mark a cache file used now (its mtime; made if missing) unless it was within the last
    day; whether it did. Stale entries are swept by their mtime (here, tarball._prune)."""
    try:
        if os.stat(path).st_mtime > time.time() - DAY:
            return False
    except OSError:
        pass
    try:
        with open(path, "ab"):
            pass
        os.utime(path)
        return True
    except OSError:
        return False  # a read-only cache: nothing is swept from it either


def mark_used(tars: Iterable[str]) -> None:
    """Stamp cached layer tars used (<cache>/used/<name>): the layer cache keeps what runs
    used lately (tarball._prune). Not the tars' own mtime: it is part of their signature
    here, and of the check made while one is streamed to a host."""
    from . import cache_path

    used = os.path.join(cache_path(), "used")
    try:
        os.makedirs(used, mode=0o700, exist_ok=True)
    except OSError:
        return
    for tar in tars:
        touch_daily(os.path.join(used, os.path.basename(tar)))
