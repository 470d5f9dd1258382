"""Day-2 robustness on the test hosts: locking, partial failure, drift, SSH trust."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_engine import CLEAN, REPO, as_test_user, changed_objects, changes, lamina


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
    args, env = as_test_user(("apply", "-i", str(lab.inventory), str(spec), "--limit", h, "--json"), None)
    cmd = [sys.executable, "-m", "lamina.cli", *args]
    runs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, **env})
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


C = "/var/lib/lamina/containers"
V = "/var/lib/lamina/volumes"


def demo_layer(lab, h: str, index: int) -> str:
    out = lamina("inspect", "-i", str(lab.inventory), "web1", "--host", h).stdout
    return json.loads(out)[0]["RootFS"]["Layers"][index].removeprefix("sha256:")


# kind → (drift made by hand, object planned, reason planned, extra apply flags, check after repair)
DRIFT = {
    "overlay unmounted": ("umount -R /srv/demo/merged", "overlay /srv/demo/merged", "not mounted", (),
                          "cat /srv/demo/merged/layer.txt"),
    "wrong lower order": ("umount -R /srv/demo/merged && mount -t overlay demo -o lowerdir=/srv/demo/low1:"
                          "/srv/demo/low2,upperdir=/srv/demo/upper,workdir=/srv/demo/work /srv/demo/merged",
                          "overlay /srv/demo/merged", "lower stack differs", (),
                          "grep -q 'from low3' /srv/demo/merged/layer.txt"),
    "foreign filesystem": ("umount -R /srv/demo/merged && mount -t tmpfs junk /srv/demo/merged",
                           "overlay /srv/demo/merged", "tmpfs (junk) is mounted there instead of overlay", (),
                           "grep -q 'from low3' /srv/demo/merged/layer.txt"),
    "layer missing": ("rm -rf /var/lib/lamina/layers/{site}", "layer {site12}", "missing", (),
                      "test -f /var/lib/lamina/layers/{site}/diff/srv/www/index.html"),
    "layer corrupted": ("echo tampered >> /var/lib/lamina/layers/{site}/diff/srv/www/index.html",
                        "layer {site12}", "content changed since it was stored", ("--check-layers",),
                        f"! grep -q tampered {C}/web1/merged/srv/www/index.html"),
    "work dir deleted": ("rm -rf /srv/demo/work", "overlay /srv/demo/merged", "missing /srv/demo/work", (),
                         "test -d /srv/demo/work"),
    "volume data deleted": (f"rm -rf {V}/web1-data/_data", "volume web1-data", f"missing {V}/web1-data/_data", (),
                            f"touch {C}/web1/merged/data/x && test -f {V}/web1-data/_data/x"),
    "bind source missing": ("rm -rf /srv/demo/shared", "bind /mnt/demo-shared", "missing /srv/demo/shared", (),
                            "touch /srv/demo/shared/y && test -f /mnt/demo-shared/y"),
    "state dir modes and owners": (f"chmod 755 {V} && chown 1000:1000 /var/lib/lamina", "volume demo-data",
                                   "has mode 755 and owner 0:0, want 700 0:0", (),
                                   "test \"$(stat -c '%a %u' /var/lib/lamina)\" = '700 0'"),
    "labels edited": (f"echo edited > {V}/demo-data/labels.json", "volume demo-data",
                      f"{V}/demo-data/labels.json differs", (), f"grep -q demo {V}/demo-data/labels.json"),
}


@pytest.mark.parametrize("kind", list(DRIFT))
def test_drift_is_planned_precisely_and_repaired(hosts, kind):
    lab = hosts
    h = lab.hosts[0]
    changes(lab, "--limit", h)
    site = demo_layer(lab, h, 1)
    drift, obj, reason, flags, check = (x.format(site=site, site12=site[:12]) if isinstance(x, str) else x
                                        for x in DRIFT[kind])
    assert lab.run(h, drift).returncode == 0
    plan = changes(lab, "--limit", h, *flags, cmd="plan")[h]
    reasons = {c["object"]: c["reasons"] for c in plan["changed"]}
    assert obj in reasons and any(reason in r for r in reasons[obj]), reasons
    report = changes(lab, "--limit", h, *flags)[h]
    assert not report["failed"], report
    r = lab.run(h, check)
    assert r.returncode == 0, (check, r.stderr)
    assert changed_objects(changes(lab, "--limit", h, *flags)) == {h: []}
    lamina("verify", "-i", str(lab.inventory), "--limit", h, "-q")


def test_orphan_mount_is_reported_and_pruned_only_when_asked(hosts, tmp_path):
    lab = hosts
    h = lab.hosts[0]
    changes(lab, "--limit", h)
    spec = tmp_path / "files"
    spec.symlink_to(REPO / "roles" / "demo" / "files")
    spec = tmp_path / "spec.yml"
    text = (REPO / "roles" / "demo" / "spec.yml").read_text()
    spec.write_text(text[: text.index("binds:")] + text[text.index("images:"):])  # the bind left the spec
    report = changes(lab, "--limit", h, spec=spec)[h]
    assert report["warnings"] == ["orphan mount /mnt/demo-shared: no spec names it now; left mounted (--prune unmounts it)"]
    assert "/mnt/demo-shared" in lab.run(h, "cat /proc/self/mountinfo").stdout
    report = changes(lab, "--limit", h, "--prune", spec=spec)[h]
    assert [c["object"] for c in report["changed"]] == ["orphan /mnt/demo-shared"]
    assert "/mnt/demo-shared" not in lab.run(h, "cat /proc/self/mountinfo").stdout
    assert changes(lab, "--limit", h, spec=spec)[h]["warnings"] == []


def test_deleted_upper_dir_is_reported_as_lost_data_not_recreated(hosts):
    lab = hosts
    h = lab.hosts[0]
    changes(lab, "--limit", h)
    lab.run(h, f"rm -rf {C}/web2/upper")
    out = lamina("apply", "-i", str(lab.inventory), "--limit", h, check=1)
    assert f"{h}: FAILED: container web2: its writable layer {C}/web2/upper was deleted" in out.stdout, out.stdout
    assert lab.run(h, f"test -e {C}/web2/upper || echo still-gone").stdout == "still-gone\n"
    lamina("reset", "-i", str(lab.inventory), "web2", "--host", h, "--yes")
    assert changed_objects(changes(lab, "--limit", h)) == {h: []}


def test_a_full_disk_fails_one_host_and_the_next_run_picks_up(hosts):
    lab = hosts
    full, others = lab.hosts[0], lab.hosts[1:]
    lab.run(full, "umount -l /var/lib/lamina; mount -t tmpfs -o size=512k,mode=755 tiny /var/lib/lamina")
    try:
        out = lamina("apply", "-i", str(lab.inventory), check=1)
        assert re.search(rf"^{full}: FAILED: .*(not enough space|No space left on device)", out.stdout, re.M), out.stdout
        for h in others:
            assert re.search(rf"^{h}: \d+ changed, 0 unchanged$", out.stdout, re.M), out.stdout
    finally:
        lab.run(full, "umount -l /var/lib/lamina; mount -t tmpfs -o mode=755 lamina /var/lib/lamina")
    report = changes(lab)
    assert report[full]["changed"] and not report[full]["failed"]
    assert all(not report[h]["changed"] for h in others)
    assert changed_objects(changes(lab)) == {h: [] for h in lab.hosts}


def test_no_secret_reaches_the_output(hosts, tmp_path):
    lab = hosts
    secret = "pa55-w0rd-never-printed"
    inv = tmp_path / "inv.py"
    inv.write_text(textwrap.dedent(f"""\
        exec(open({str(lab.inventory)!r}).read())
        lab = [(n, dict(d, ssh_password={secret!r})) for n, d in lab] + [
            ("ghost", dict(lab[0][1], ssh_hostname="10.231.0.250", ssh_connect_retries=0,
                           ssh_password={secret!r}))]
        """))
    for cmd in ("plan", "apply", "verify"):
        out = lamina(cmd, "-i", str(inv), check=None)
        assert secret not in out.stdout + out.stderr, cmd


def test_sigterm_ends_a_run_and_its_connections(hosts, tmp_path):
    """`kill` (a cancelled CI job) while apply waits for a lock: lamina unwinds as on Ctrl-C,
    exits 143, and its ssh master goes with it (Python's default left it running, connected,
    on its own) along with the run's control directory."""
    import signal

    from test_engine import REPO, as_test_user, gone

    lab = hosts
    h = lab.hosts[1]
    holder = subprocess.Popen(lab.ssh_argv(h, "mkdir -p /run/lamina && exec flock /run/lamina/apply.lock sleep 30"))
    control = tmp_path / "control"
    control.mkdir()
    try:
        time.sleep(0.5)
        args, env = as_test_user(("apply", "-i", str(lab.inventory), "--limit", h), None)
        run = subprocess.Popen([sys.executable, "-m", "lamina.cli", *args], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, **env, "TMPDIR": str(control)})
        deadline = time.monotonic() + 30
        while not any(control.rglob("*")) and time.monotonic() < deadline:  # its master is up
            time.sleep(0.05)
        time.sleep(1)  # and it waits for the lock
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=30)
        assert run.returncode == 143 and "lamina: terminated" in err, err
    finally:
        holder.kill()
    assert gone(control) and list(control.iterdir()) == []
