"""Day-2 robustness on the test hosts: locking, partial failure, drift, SSH trust."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_engine import CLEAN, REPO, changed_objects, changes, lamina


@pytest.fixture
def hosts(lab, demo_rootfs):
    for h in lab.hosts:
        assert lab.run(h, CLEAN + "rm -f /run/lamina/apply.holder\n").returncode == 0
    return lab


def slow_spec(tmp_path: Path, rootfs: Path) -> Path:
    (tmp_path / "files").symlink_to(rootfs.parent)
    spec = tmp_path / "slow.yml"
    spec.write_text(textwrap.dedent("""\
        images:
          base: {steps: [{add: {src: rootfs.tar}}]}
          slow:
            from: base
            steps: [{run: "sleep 3 && date +%s%N > /built"}]
        containers:
          one: {image: slow}
        """))
    return spec


def test_two_applies_at_once_never_interleave(hosts, tmp_path, demo_rootfs):
    lab = hosts
    h = lab.hosts[0]
    spec = slow_spec(tmp_path, demo_rootfs)
    cmd = [sys.executable, "-m", "lamina.cli", "apply", "-i", str(lab.inventory), str(spec), "--limit", h, "--json"]
    runs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outs = [r.communicate(timeout=120) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outs
    reports = [json.loads(o[0])["hosts"][h] for o in outs]
    built = [r for r in reports if any(c["object"] == "run images.slow.steps[0]" for c in r["changed"])]
    assert len(built) == 1, reports  # the second run waited, looked again, and found nothing left to do
    assert len(lab.run(h, "ls /var/lib/lamina/layers").stdout.split()) == 2  # built once
    assert changed_objects(changes(lab, "--limit", h, spec=spec)) == {h: []}


def test_a_held_lock_makes_apply_wait_then_fail_naming_the_holder(hosts, tmp_path):
    lab = hosts
    h = lab.hosts[1]
    holder = subprocess.Popen(lab.ssh_argv(h, "mkdir -p /run/lamina && echo 'alice@console pid 42' > "
                                              "/run/lamina/apply.holder && exec flock /run/lamina/apply.lock sleep 30"))
    try:
        time.sleep(0.5)
        start = time.monotonic()
        out = lamina("apply", "-i", str(lab.inventory), "--limit", h, "--lock-timeout", "2", check=1)
        waited = time.monotonic() - start
        assert f"{h}: FAILED: locked by alice@console pid 42; gave up after 2 s" in out.stdout, out.stdout
        assert 2 <= waited < 15
        assert lab.run(h, "ls /srv/demo/merged 2>/dev/null | wc -l").stdout.strip() == "0"  # nothing done
        noop = lamina("plan", "-i", str(lab.inventory), "--limit", h)  # reading needs no lock
        assert re.search(rf"^{h}: \d+ to change", noop.stdout, re.M)
    finally:
        holder.kill()
    lamina("apply", "-i", str(lab.inventory), "--limit", h)  # the lock went with its holder's connection


def test_changed_host_key_fails_that_host_clearly(hosts, tmp_path):
    lab = hosts
    h = lab.hosts[2]
    known = Path(lab.ssh_config).parent / "known_hosts"
    original = known.read_text()
    other = next(line for line in original.splitlines() if not line.startswith(h + ","))
    forged = "\n".join(line if not line.startswith(h + ",") else line.split()[0] + " " + " ".join(other.split()[1:])
                       for line in original.splitlines()) + "\n"
    try:
        known.write_text(forged)
        out = lamina("plan", "-i", str(lab.inventory), check=1)
        assert re.search(rf"^{h}: FAILED: .*host key", out.stdout, re.M | re.I), out.stdout
        assert all(f"{x}: FAILED" not in out.stdout for x in lab.hosts if x != h)
    finally:
        known.write_text(original)
