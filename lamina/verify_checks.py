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
def state(name: str) -> facts.HostState:
    out = host(name).run(facts.command(plans()[name]))
    assert out.rc == 0, f"{name}: reading state failed: {out.stderr.strip()}"
    return facts.parse(out.stdout.splitlines())


def as_specified(name: str, item: Item) -> None:
    """as specified"""
    result = diff.diff(plans()[name], state(name))
    problems = [e for e in result.errors if e.startswith(item.key + ":")]
    problems += [r for c in result.changes if c.key == item.key for r in c.reasons]
    assert not problems, "; ".join(problems)


# cksum, not cmp: hosts need only sh, coreutils and util-linux.
# For each top-level name in the layers (highest first: upper, then lowers), the
# first layer that has it decides: a file must read the same through the merged
# view, a whiteout (char device 0/0) must hide it.
MERGED_CHECK = r"""
m=$1; shift; seen=/; bad=0
for layer in "$@"; do
  for f in "$layer"/* "$layer"/.[!.]*; do
    [ -e "$f" ] || [ -L "$f" ] || continue
    n=${f##*/}
    case "$seen" in *"/$n/"*) continue ;; esac
    seen="$seen$n/"
    if [ -c "$f" ]; then
      if [ -e "$m/$n" ]; then echo "$n: deleted in $layer but visible in $m"; bad=1; fi
    elif [ -f "$f" ] && [ "$(cksum < "$f")" != "$(cksum < "$m/$n" 2>&1)" ]; then
      echo "$n: $m does not show $layer's version"; bad=1
    fi
  done
done
exit $bad
"""


def merged_view(name: str, item: Item) -> None:
    """merged view shows the highest layer"""
    m = item.mount
    lower = diff.Host(plans()[name], state(name)).lower(m)
    assert lower is not None, "image layers missing"
    layers = [p for p in (m.upper, *lower.paths) if p]
    args = " ".join(shlex.quote(a) for a in (m.target, *layers))
    out = host(name).run(f"sh -c {shlex.quote(MERGED_CHECK)} lamina-check {args}")
    assert out.rc == 0, out.stdout.strip() or out.stderr.strip()


def layer_sealed(name: str, item: Item) -> None:
    """content unchanged"""
    digest = diff.Host(plans()[name], state(name)).digest(item.layer)
    assert digest, f"{item.layer.label}: not built on this host"
    out = host(name).run(command("checkseal", plans()[name].state_dir, digest))
    assert out.rc == 0 and not out.stdout.strip(), out.stdout.strip() or out.stderr.strip()


def volume_data(name: str, item: Item) -> None:
    """data dir exists"""
    assert host(name).file(item.dirs[-1].path).is_directory, f"{item.dirs[-1].path} is not a directory"


def bind_source(name: str, item: Item) -> None:
    """source exists"""
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
