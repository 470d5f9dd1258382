"""pytest-testinfra checks generated from lamina specs (run by `lamina verify`).

One test per (host, object): the object is as the spec says — the same comparison
`plan` and `apply` use, on state read over testinfra's ssh backend — plus checks made
independently of that comparison: the merged view of each overlay shows the highest
layer's version of every file, volume data and bind sources exist.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex

import pytest
import testinfra

from lamina import diff, facts
from lamina.materialize import command
from lamina.plan import HostPlan, Item
from lamina.runner import host_plan, load_inventory

CONFIG = json.loads(os.environ.get("LAMINA_VERIFY", "{}"))


@functools.cache
def plans() -> dict[str, HostPlan]:
    inventory = load_inventory(CONFIG["inventory"])
    return {h.name: host_plan(h.name, h.data.dict(), CONFIG["specs"])
            for h in inventory if h.name in CONFIG["hosts"]}


@functools.cache
def host(name: str):
    return testinfra.get_host(f"ssh://{name}", ssh_config=CONFIG["ssh_config"], sudo=CONFIG["sudo"])


@functools.cache
def _read(name: str) -> facts.HostState | str:
    """The host's state, or why it could not be read (kept: an unreachable host fails
    each of its tests at once instead of timing out in every one)."""
    try:
        out = host(name).run(facts.command(plans()[name]))
    except Exception as e:  # testinfra raises on a connection failure
        return f"{name}: cannot reach it: {str(e).strip().splitlines()[-1] if str(e).strip() else e!r}"
    if out.rc != 0:
        return f"{name}: reading state failed: {(out.stderr or out.stdout).strip()}"
    return facts.parse(out.stdout.splitlines())


def state(name: str) -> facts.HostState:
    got = _read(name)
    if isinstance(got, str):
        pytest.fail(got, pytrace=False)
    return got


def as_specified(name: str, item: Item) -> None:
    """as specified"""
    result = diff.diff(plans()[name], state(name))
    problems = [e for e in result.errors if e.startswith(item.key + ":")]
    problems += [r for c in result.changes if c.key == item.key for r in c.reasons]
    assert not problems, "; ".join(problems)


# What each layer holds, highest first, in one command: GNU tar's verbose listing
# (`-cvv` to /dev/null reads metadata only).
LISTING = 'for l in "$@"; do echo "@@layer $l"; tar -C "$l" -cvvf /dev/null --numeric-owner . || exit 1; done'
ENTRY = re.compile(r"^(?P<type>.)\S{9} \S+\s+\S+ \S+ \S+ \./(?P<path>.+?)(?: -> .*)?$")

# cksum, not cmp: hosts need only sh, coreutils and util-linux. Pairs of (layer, path):
# a whiteout (char device 0/0) must hide the path; a file the merged view shows must
# be that layer's version.
COMPARE = r"""
m=$1; shift
while [ "$#" -ge 2 ]; do
  l=$1 p=$2; shift 2
  if [ -c "$l/$p" ]; then
    if [ -e "$m/$p" ] || [ -L "$m/$p" ]; then echo "$p: deleted in $l but visible in $m"; fi
  elif [ -f "$m/$p" ] && [ "$(cksum < "$l/$p")" != "$(cksum < "$m/$p")" ]; then
    echo "$p: $m does not show $l's version"
  fi
done
"""
MAX_COMPARED = 400  # files compared per tree (all whiteouts always are), the highest layers' first


def topmost(listing: list[str]) -> list[tuple[str, str, str]]:
    """(layer, path, type) for each path, from the highest layer that has it."""
    owner: dict[str, tuple[str, str]] = {}
    layer = ""
    for line in listing:
        if line.startswith("@@layer "):
            layer = line[len("@@layer "):]
            continue
        m = ENTRY.match(line)
        if m and m["path"].rstrip("/") and m["path"].rstrip("/") not in owner:
            owner[m["path"].rstrip("/")] = (layer, m["type"])
    return [(layer, path, kind) for path, (layer, kind) in owner.items()]


def merged_view(name: str, item: Item) -> None:
    """merged view shows the highest layer"""
    m = item.mount
    lower = diff.Host(plans()[name], state(name)).lower(m)
    assert lower is not None, "image layers missing"
    layers = [p for p in (m.upper, *lower.paths) if p]
    quoted = " ".join(shlex.quote(x) for x in layers)
    listing = host(name).run(f"sh -c {shlex.quote(LISTING)} lamina-list {quoted}")
    assert listing.rc == 0, listing.stderr.strip()
    entries = topmost(listing.stdout.splitlines())
    whiteouts = [(layer, path) for layer, path, kind in entries if kind == "c"]
    files = [(layer, path) for layer, path, kind in entries if kind == "-"][:MAX_COMPARED]
    args = " ".join(shlex.quote(x) for pair in whiteouts + files for x in pair)
    out = host(name).run(f"sh -c {shlex.quote(COMPARE)} lamina-compare {shlex.quote(m.target)} {args}")
    assert out.rc == 0 and not out.stdout.strip(), out.stdout.strip() or out.stderr.strip()


def layer_sealed(name: str, item: Item) -> None:
    """content unchanged"""
    digest = diff.Host(plans()[name], state(name)).digest(item.layer)
    assert digest, f"{item.layer.label}: not built on this host"
    out = host(name).run(command("checkseal", plans()[name].state_dir, digest))
    assert out.rc == 0 and not out.stdout.strip(), out.stdout.strip() or out.stderr.strip()


def volume_data(name: str, item: Item) -> None:
    """data dir exists"""
    state(name)  # reachable at all
    assert host(name).file(item.dirs[-1].path).is_directory, f"{item.dirs[-1].path} is not a directory"


def bind_source(name: str, item: Item) -> None:
    """source exists"""
    state(name)
    assert host(name).file(item.mount.source).exists, f"{item.mount.source} does not exist"


# Checks made on their own, beside the shared comparison, per kind of present object.
CHECKS = {"overlay": [merged_view], "container": [merged_view], "layer": [layer_sealed],
          "volume": [volume_data], "bind": [bind_source]}


def cases() -> list:
    out = []
    for name, plan in plans().items():
        for item in plan.items:
            checks = [as_specified] + (CHECKS.get(item.kind, []) if item.state == "present" else [])
            out += [pytest.param(name, item, check, id=f"{name}: {item.key}: {check.__doc__}") for check in checks]
    return out


@pytest.mark.parametrize(("name", "item", "check"), cases())
def test_host(name: str, item: Item, check) -> None:
    check(name, item)
