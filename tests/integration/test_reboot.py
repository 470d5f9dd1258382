"""Persistence across reboot, for real: hosts with systemd as PID 1 and persistent disks
(`lamina lab up --init systemd`), rebooted with `lamina lab reboot`. Every mount comes
back without lamina running, verify passes, and a re-run changes nothing."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest
from test_engine import CLEAN, DEMO, REPO, USERLANDS, as_test_user, on


def lamina_in(slab, *args: str, check: int | None = 0) -> subprocess.CompletedProcess:
    import os

    args, env = as_test_user(args, slab.env)
    out = subprocess.run([sys.executable, "-m", "lamina.cli", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env={**os.environ, **env})
    if check is not None:
        assert out.returncode == check, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def lamina_mounts(slab, host: str) -> list[str]:
    out = slab.run(host, "awk '$5 ~ \"^/(srv|mnt|var/lib/lamina)/\" {print $5}' /proc/self/mountinfo | sort")
    return out.stdout.split()


@pytest.mark.parametrize("userland", USERLANDS)
def test_mounts_come_back_after_reboot(systemd_lab, demo_rootfs, userland):
    slab = systemd_lab
    with slab.active():  # its lab's hosts.json says which is which
        h = on(slab.hosts, userland)
    assert slab.run(h, CLEAN).returncode == 0
    inv = str(slab.inventory)
    lamina_in(slab, "apply", "-i", inv, str(DEMO), "--limit", h)
    before = lamina_mounts(slab, h)
    assert len(before) >= 10, before  # the overlay, two containers, the volumes and binds inside them
    assert slab.run(h, "systemctl is-enabled lamina-mounts.service").stdout.strip() == "enabled"
    slab.run(h, "echo kept > /var/lib/lamina/containers/web1/merged/root/note")
    slab.reboot(h)
    assert lamina_mounts(slab, h) == before  # back without lamina running
    assert slab.run(h, "cat /var/lib/lamina/containers/web1/merged/root/note").stdout == "kept\n"
    assert slab.run(h, "cat /srv/demo/merged/layer.txt").stdout == "from low3\n"
    assert slab.run(h, "systemctl is-active lamina-mounts.service").stdout.strip() == "active"
    lamina_in(slab, "verify", "-i", inv, str(DEMO), "--limit", h, "-q")
    report = json.loads(lamina_in(slab, "apply", "-i", inv, str(DEMO), "--limit", h, "--json").stdout)
    assert report["hosts"][h]["changed"] == [], report


def test_an_edited_unit_is_repaired(systemd_lab, demo_rootfs):
    slab = systemd_lab
    h = slab.hosts[0]
    inv = str(slab.inventory)
    lamina_in(slab, "apply", "-i", inv, str(DEMO), "--limit", h)
    slab.run(h, "sed -i 's/^ExecStart=.*/ExecStart=\\/bin\\/true/' /etc/systemd/system/lamina-mounts.service")
    plan = json.loads(lamina_in(slab, "plan", "-i", inv, str(DEMO), "--limit", h, "--json").stdout)
    assert [(c["object"], c["reasons"]) for c in plan["hosts"][h]["changed"]] == [
        ("boot mounts", ["/etc/systemd/system/lamina-mounts.service differs"])]
    lamina_in(slab, "apply", "-i", inv, str(DEMO), "--limit", h)
    assert "ExecStart=/bin/sh /var/lib/lamina/boot.sh" in slab.run(h, "cat /etc/systemd/system/lamina-mounts.service").stdout
    slab.reboot(h)
    assert "/srv/demo/merged" in lamina_mounts(slab, h)


# Debian's /etc/rc.local as it shipped: anything appended after its `exit 0` never runs.
DEBIAN_RC_LOCAL = """#!/bin/sh -e
#
# rc.local
#
# This script is executed at the end of each multiuser runlevel.
#
# By default this script does nothing.

exit 0
"""


def test_without_systemd_mounts_come_back_from_rc_local(sysv_lab, demo_rootfs):
    """A host without systemd whose rc.local ends in `exit 0`: lamina starts its boot script
    before that exit, every mount comes back after a reboot, and a re-run changes nothing.
    A hook left after the exit (or removed) is drift, repaired like any other."""
    slab = sysv_lab
    h = slab.hosts[0]
    inv = str(slab.inventory)
    assert slab.run(h, CLEAN).returncode == 0
    assert slab.run(h, f"printf %s {shlex.quote(DEBIAN_RC_LOCAL)} > /etc/rc.local && chmod 755 /etc/rc.local").returncode == 0
    lamina_in(slab, "apply", "-i", inv, str(DEMO), "--limit", h)
    hook = "[ -x /var/lib/lamina/boot.sh ] && /var/lib/lamina/boot.sh  # lamina"
    assert slab.run(h, "cat /etc/rc.local").stdout == DEBIAN_RC_LOCAL.replace("exit 0", f"{hook}\nexit 0")
    before = lamina_mounts(slab, h)
    assert len(before) >= 10, before
    slab.reboot(h)
    assert lamina_mounts(slab, h) == before  # back without lamina running
    lamina_in(slab, "verify", "-i", inv, str(DEMO), "--limit", h, "-q")
    report = json.loads(lamina_in(slab, "apply", "-i", inv, str(DEMO), "--limit", h, "--json").stdout)
    assert report["hosts"][h]["changed"] == [], report

    for drift, why in ((f"printf '%s\\n' {shlex.quote(hook)} >> /etc/rc.local", "exits before it starts the boot script"),
                       ("printf '#!/bin/sh\\nexit 0\\n' > /etc/rc.local", "does not start the boot script")):
        slab.run(h, f"printf %s {shlex.quote(DEBIAN_RC_LOCAL)} > /etc/rc.local && {drift}")
        plan = json.loads(lamina_in(slab, "plan", "-i", inv, str(DEMO), "--limit", h, "--json").stdout)
        assert [(c["object"], c["reasons"]) for c in plan["hosts"][h]["changed"]] == [
            ("boot mounts", [f"/etc/rc.local {why}"])]
        lamina_in(slab, "apply", "-i", inv, str(DEMO), "--limit", h)
        rc = slab.run(h, "cat /etc/rc.local").stdout.splitlines()
        assert rc[-2:] == [hook, "exit 0"] and rc.count(hook) == 1, rc
