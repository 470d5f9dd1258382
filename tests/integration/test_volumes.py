"""Volumes with driver options, `lamina volume ls|inspect|rm`, `lamina reset`."""

from __future__ import annotations

import json
import textwrap

import pytest
from test_engine import CLEAN, changed_objects, changes, lamina

C = "/var/lib/lamina/containers"
V = "/var/lib/lamina/volumes"


@pytest.fixture
def host(lab, demo_rootfs, tmp_path):
    h = lab.hosts[0]
    assert lab.run(h, CLEAN).returncode == 0
    (tmp_path / "files").symlink_to(demo_rootfs.parent)
    spec = tmp_path / "spec.yml"
    spec.write_text(textwrap.dedent("""\
        volumes:
          scratch:
            labels: {kind: fast}
            driver_opts: {type: tmpfs, o: "size=8m,mode=0750", device: lamina-scratch}
          plain: {}
        images:
          base: {steps: [{add: {src: rootfs.tar}}]}
        containers:
          app:
            image: base
            mounts: [scratch:/scratch, plain:/etc]
        """))
    return lab, h, spec


def test_driver_opts_volume_is_mounted_verified_and_repaired(host):
    lab, h, spec = host
    changes(lab, "--limit", h, spec=spec)
    line = lab.run(h, f"grep ' {V}/scratch/_data ' /proc/self/mountinfo").stdout
    assert " - tmpfs lamina-scratch " in line and "size=8192k" in line and "mode=750" in line
    lab.run(h, f"echo hi > {C}/app/merged/scratch/f")
    assert lab.run(h, f"cat {V}/scratch/_data/f").stdout == "hi\n"
    assert changed_objects(changes(lab, "--limit", h, spec=spec)) == {h: []}
    lamina("verify", "-i", str(lab.inventory), str(spec), "--limit", h, "-q")
    lab.run(h, f"umount {C}/app/merged/scratch && umount {V}/scratch/_data")
    report = changes(lab, "--limit", h, spec=spec, cmd="plan")
    assert [(c["object"], c["reasons"]) for c in report[h]["changed"]][0] == ("volume scratch", ["not mounted"])
    changes(lab, "--limit", h, spec=spec)
    assert "tmpfs" in lab.run(h, f"stat -f -c %T {V}/scratch/_data").stdout
    assert changed_objects(changes(lab, "--limit", h, spec=spec)) == {h: []}


def test_volume_ls_inspect_rm(host):
    lab, h, spec = host
    changes(lab, "--limit", h, spec=spec)
    found = json.loads(lamina("volume", "ls", "-i", str(lab.inventory), "--host", h, "--json").stdout)
    by_name = {v["Name"]: v for v in found}
    assert set(by_name) == {"scratch", "plain"}
    assert by_name["scratch"]["Labels"] == {"kind": "fast"} and by_name["scratch"]["Options"]["type"] == "tmpfs"
    assert by_name["plain"]["UsedBy"] == [f"{C}/app/merged/etc"]
    (record,) = json.loads(lamina("volume", "inspect", "-i", str(lab.inventory), "plain", "--host", h).stdout)
    assert record["Mountpoint"] == f"{V}/plain/_data"
    out = lamina("volume", "rm", "-i", str(lab.inventory), "plain", "--host", h, "--yes", check=1)
    assert f"volume plain is in use at {C}/app/merged/etc" in out.stderr
    out = lamina("volume", "rm", "-i", str(lab.inventory), "plain", "--host", h, check=2)  # no terminal, no --yes
    assert "Not without --yes" in out.stderr
    lab.run(h, f"umount -R {C}/app/merged")
    lamina("volume", "rm", "-i", str(lab.inventory), "plain", "--host", h, "--yes")
    assert lab.run(h, f"test -e {V}/plain || echo gone").stdout == "gone\n"


def test_reset_drops_the_writable_layer_and_keeps_volumes(host):
    lab, h, spec = host
    changes(lab, "--limit", h, spec=spec)
    lab.run(h, f"echo mine > {C}/app/merged/root/note && echo kept > {C}/app/merged/etc/vol-note")
    out = lamina("reset", "-i", str(lab.inventory), "app", str(spec), "--host", h, "--yes")
    assert out.stdout == f"{h}: container app reset\n"
    assert lab.run(h, f"test -e {C}/app/merged/root/note || echo gone").stdout == "gone\n"
    assert lab.run(h, f"cat {C}/app/merged/etc/vol-note").stdout == "kept\n"  # the volume is untouched
    assert changed_objects(changes(lab, "--limit", h, spec=spec)) == {h: []}
