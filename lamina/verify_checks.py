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


def cases(kind: str | None = None) -> list:
    return [pytest.param(name, item, id=f"{name}: {item.key}")
            for name, plan in plans().items() for item in plan.items
            if kind is None or (item.kind == kind and item.state == "present")]


@pytest.mark.parametrize(("name", "item"), cases())
def test_object_as_specified(name: str, item: Item) -> None:
    result = diff.diff(plans()[name], state(name))
    problems = [e for e in result.errors if e.startswith(item.key + ":")]
    problems += [r for c in result.changes if c.key == item.key for r in c.reasons]
    assert not problems, "; ".join(problems)


# cksum, not cmp: hosts need only sh, coreutils and util-linux.
# For each top-level name in the layers (highest first: upper, then lowers), the
# first layer that has it decides: a file must read the same through the merged
# view, a whiteout (char device 0/0 in upper) must hide it.
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


@pytest.mark.parametrize(("name", "item"), cases("overlay") + cases("container"))
def test_merged_view_shows_highest_layer(name: str, item: Item) -> None:
    m = item.mount
    lower = diff.Host(plans()[name], state(name)).lower(m)
    assert lower is not None, "image layers missing"
    layers = [p for p in (m.upper, *lower.paths) if p]
    args = " ".join(shlex.quote(a) for a in (m.target, *layers))
    out = host(name).run(f"sh -c {shlex.quote(MERGED_CHECK)} lamina-check {args}")
    assert out.rc == 0, out.stdout.strip() or out.stderr.strip()


@pytest.mark.parametrize(("name", "item"), cases("layer"))
def test_layer_content_unchanged(name: str, item: Item) -> None:
    digest = diff.Host(plans()[name], state(name)).digest(item.layer)
    assert digest, f"{item.layer.label}: not built on this host"
    out = host(name).run(command("checkseal", plans()[name].state_dir, digest))
    assert out.rc == 0 and not out.stdout.strip(), out.stdout.strip() or out.stderr.strip()


@pytest.mark.parametrize(("name", "item"), cases("volume"))
def test_volume_data_dir(name: str, item: Item) -> None:
    data = host(name).file(item.dirs[-1].path)
    assert data.is_directory, f"{item.dirs[-1].path} is not a directory"


@pytest.mark.parametrize(("name", "item"), cases("bind"))
def test_bind_source_exists(name: str, item: Item) -> None:
    assert host(name).file(item.mount.source).exists, f"{item.mount.source} does not exist"
