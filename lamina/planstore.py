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

import hashlib
import json
import os
import pickle
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

_noted: dict[str, Any] | None = None  # path → signature, while planning is recorded
ENV = ("HOME", "LAMINA_CACHE_DIR", "LAMINA_IMAGES")
STALE = 14 * 86400  # entries unused this long are removed
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
            sig.append(hashlib.sha256(Path(path).read_bytes()).hexdigest())
        except OSError:
            return None
    if tree and stat.S_ISDIR(st.st_mode):
        h = hashlib.sha256()
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
    root = Path(__file__).parent
    files = sorted([*root.glob("*.py"), *root.glob("sh/*"), *root.parent.glob("templates/*")])
    return [sys.version, *((str(p), os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in files)]


def key(hosts: list[tuple[str, dict[str, Any]]], specs: list[str], flags: dict[str, bool]) -> str | None:
    try:
        blob = json.dumps([_code(), os.getcwd(), [os.path.abspath(s) for s in specs], hosts, flags,
                           [os.environ.get(k) for k in ENV]], sort_keys=True)
    except (TypeError, ValueError):
        return None  # host data JSON cannot express: plan afresh every time
    return hashlib.sha256(blob.encode()).hexdigest()


def _path(key: str) -> Path:
    from . import cache_dir

    return cache_dir() / "plans" / f"{key}.pickle"


@dataclass
class Entry:
    """One stored planning: the plans, their fact commands, and for each host that was in
    sync, the digest of its fact output with the comparison's result. Comparing a plan with
    a host is a pure function of the two, so byte-identical output gives that same result
    without comparing again."""

    key: str | None
    inputs: dict[str, Any]
    plans: dict[str, Any]
    commands: dict[str, str] = field(default_factory=dict)
    synced: dict[str, tuple[str, Any]] = field(default_factory=dict)
    dirty: bool = True

    def command(self, name: str) -> str:
        if name not in self.commands:
            from . import facts

            self.commands[name], self.dirty = facts.command(self.plans[name]), True
        return self.commands[name]

    def known(self, name: str, output: str):
        """The result stored for exactly this fact output of this host, or None."""
        memo = self.synced.get(name)
        return memo[1] if memo is not None and memo[0] == _digest(output) else None

    def remember(self, name: str, output: str, result) -> None:
        digest = _digest(output)
        if self.synced.get(name, ("",))[0] != digest:
            self.synced[name], self.dirty = (digest, result), True

    def save(self) -> None:
        if self.key is None or not self.dirty:
            return
        for p in self.plans.values():  # the layer tars a run would ship
            for ref in p.layers.values():
                if ref.layer is not None:
                    self.inputs[os.path.abspath(ref.layer.path)] = signature(str(ref.layer.path))
        path = _path(self.key)
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                pickle.dump(replace(self, dirty=False), f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
            for old in path.parent.iterdir():  # entries of specs no longer run
                if old.stat().st_mtime < time.time() - STALE:
                    old.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only cache: plan afresh next time
        self.dirty = False


def _digest(output: str) -> str:
    return hashlib.sha256(output.encode(errors="surrogateescape")).hexdigest()


def load(key: str | None) -> Entry | None:
    """The entry stored under `key` if every file its plans came from is unchanged, else None."""
    if key is None:
        return None
    try:
        with open(_path(key), "rb") as f:
            entry = pickle.load(f)
    except Exception:  # missing, truncated, or from another lamina: plan afresh
        return None
    if not isinstance(entry, Entry) or entry.key != key:
        return None
    for name, sig in entry.inputs.items():
        if signature(name.removeprefix("tree:"), name.startswith("tree:")) != sig:
            return None
    return entry
