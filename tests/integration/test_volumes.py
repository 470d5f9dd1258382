"""Volumes with driver options, `lamina volume ls|inspect|rm`, `lamina reset`."""

from __future__ import annotations

import json
import os
import textwrap

import pytest
from test_engine import CLEAN, USERLANDS, changed_objects, changes, lamina, on

C = "/var/lib/lamina/containers"
V = "/var/lib/lamina/volumes"


@pytest.fixture(params=USERLANDS)
def host(lab, demo_rootfs, tmp_path, request):
    h = on(lab.hosts, request.param)
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


def test_cp_in_and_out_keeps_modes_and_owners(host, tmp_path):
    lab, h, spec = host
    changes(lab, "--limit", h, spec=spec)
    src = tmp_path / "payload"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "tool").write_text("#!/bin/sh\n")
    (src / "sub" / "tool").chmod(0o750)
    (src / "data.txt").write_text("data\n")
    os.chown(src / "data.txt", 1000, 1000)
    inv = str(lab.inventory)
    lamina("cp", "-i", inv, "-s", str(spec), str(src), f"{h}:app:/opt")  # /opt missing: becomes /opt
    assert lab.run(h, f"stat -c '%a %u:%g' {C}/app/merged/opt/sub/tool {C}/app/merged/opt/data.txt").stdout == \
        "750 0:0\n644 1000:1000\n"
    lamina("cp", "-i", inv, "-s", str(spec), str(src), f"{h}:app:/root")  # existing dir: goes under its name
    assert lab.run(h, f"cat {C}/app/merged/root/payload/data.txt").stdout == "data\n"
    lamina("cp", "-i", inv, "-s", str(spec), str(src) + "/.", f"{h}:plain:/")  # contents into a volume
    assert lab.run(h, f"cat {C}/app/merged/etc/data.txt").stdout == "data\n"  # seen through the mount
    out = tmp_path / "out"
    out.mkdir()
    lamina("cp", "-i", inv, "-s", str(spec), f"{h}:app:/opt/sub", str(out))
    assert (out / "sub" / "tool").stat().st_mode & 0o777 == 0o750
    lamina("cp", "-i", inv, "-s", str(spec), f"{h}:plain:data.txt", str(out / "copy.txt"))
    assert (out / "copy.txt").read_text() == "data\n" and (out / "copy.txt").stat().st_uid == 1000
    lab.run(h, f"ln -s /etc {C}/app/merged/escape")
    bad = lamina("cp", "-i", inv, "-s", str(spec), str(src), f"{h}:app:/escape/x", check=1)
    assert "leads out of app" in bad.stderr
    assert lab.run(h, "test -e /etc/x || echo safe").stdout == "safe\n"


def test_read_only_volume_mount_is_read_only(host, tmp_path):
    lab, h, spec = host
    spec.write_text(spec.read_text().replace("plain:/etc", "plain:/etc:ro"))
    changes(lab, "--limit", h, spec=spec)
    r = lab.run(h, f"touch {C}/app/merged/etc/x")
    assert r.returncode != 0 and "Read-only file system" in r.stderr
