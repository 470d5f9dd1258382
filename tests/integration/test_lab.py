"""The test hosts themselves (lamina lab): reachability, isolation, accounting, lifecycle."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

from lamina import lab as labmod


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"rc={proc.returncode}\nout: {proc.stdout}\nerr: {proc.stderr}"
    return proc.stdout.strip()


def _lab_cli(*argv: str) -> int:
    """`lamina lab ...` through register(), as lamina.cli wires it."""
    parser = argparse.ArgumentParser(prog="lamina")
    labmod.register(parser.add_subparsers())
    args = parser.parse_args(["lab", *argv])
    return args.func(args)


def _netns_of_lab() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return sorted(
        n
        for n in (ln.split()[0] for ln in out.splitlines() if ln.strip())
        if re.fullmatch(r"tlab[0-9]+", n)
    )


def _wrong_known_hosts(tmp_path: Path, lab) -> Path:
    """A known_hosts naming every lab host with a key none of them has."""
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pub = " ".join(key.with_suffix(".pub").read_text().split()[:2])
    kh = tmp_path / "known_hosts"
    kh.write_text("".join(f"{h},{lab.addresses[h]} {pub}\n" for h in lab.hosts))
    return kh


def test_hosts_answer_over_ssh_with_host_key_checking(lab):
    assert lab.hosts == ["tlab1", "tlab2", "tlab3"]
    for name in lab.hosts:
        out = _ok(lab.run(name, "hostname; ip -4 -o addr show dev eth0"))
        assert out.splitlines()[0] == name
        assert f" {lab.addresses[name]}/24 " in out
    # the ssh_config really checks host keys, against the lab's known_hosts only
    cfg = _ok(
        subprocess.run(
            ["ssh", "-G", "-F", str(lab.ssh_config), "tlab1"], capture_output=True, text=True
        )
    )
    assert "stricthostkeychecking true" in cfg.splitlines()
    assert f"userknownhostsfile {labmod.known_hosts()}" in cfg.splitlines()
    assert (labmod.lab_dir().stat().st_mode & 0o777) == 0o700


def test_status_lists_live_hosts(lab):
    rows = labmod.status()
    assert [r["name"] for r in rows] == lab.hosts
    assert all(r["sshd"] == "yes" and r["pid"] for r in rows), rows


def test_mount_on_one_host_is_invisible_elsewhere(lab):
    tag = f"lamina-test-{uuid.uuid4().hex[:8]}"  # tmpfs source name: unique in mountinfo
    _ok(
        lab.run(
            "tlab1",
            f"mkdir -p /srv/x && mount -t tmpfs {shlex.quote(tag)} /srv/x && touch /srv/x/f",
        )
    )
    try:
        assert tag in _ok(lab.run("tlab1", "cat /proc/self/mountinfo"))
        assert tag not in _ok(lab.run("tlab2", "cat /proc/self/mountinfo"))
        assert _ok(lab.run("tlab2", "test -e /srv/x && echo yes || echo no")) == "no"
        assert tag not in Path("/proc/self/mountinfo").read_text()
        for pid in (h.pid for h in labmod.hosts() if h.name != "tlab1"):
            assert tag not in Path(f"/proc/{pid}/mountinfo").read_text()
    finally:
        _ok(lab.run("tlab1", "umount /srv/x && rmdir /srv/x"))


def test_state_dirs_are_private_tmpfs_per_host(lab):
    tag = uuid.uuid4().hex[:8]
    dirs = ["/var/lib/lamina", "/srv", "/mnt", "/tmp", "/run", "/root"]
    assert _ok(lab.run("tlab1", "stat -fc %T " + shlex.join(dirs))).split() == ["tmpfs"] * len(dirs)
    files = [f"{d}/lab-test-{tag}" for d in ["/var/lib/lamina", "/srv", "/mnt", "/etc"]]
    _ok(lab.run("tlab1", "touch " + shlex.join(files)))
    try:
        assert _ok(lab.run("tlab2", "ls -d " + shlex.join(files) + " 2>/dev/null; true")) == ""
        assert not any(os.path.exists(f) for f in files)  # /etc: copy-on-write root
    finally:
        _ok(lab.run("tlab1", "rm -f " + shlex.join(files)))
    # a clean home: not the machine's ~/.bashrc (which may block), and commands don't hang
    assert "pyenv" not in _ok(lab.run("tlab1", "cat /root/.bashrc"))


def test_one_ssh_command_is_one_exec_request(lab):
    since = lab.mark("tlab2")
    _ok(lab.run("tlab2", "true"))
    assert lab.exec_requests("tlab2", since) == ["command"]
    # sftp (pyinfra's uploads) is a subsystem request; other hosts saw nothing
    others = {h: lab.mark(h) for h in ("tlab1", "tlab3")}
    sftp = subprocess.run(
        ["ssh", "-F", str(lab.ssh_config), "-s", "tlab2", "sftp"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    assert sftp.returncode == 0
    assert lab.exec_requests("tlab2", since) == ["command", "subsystem 'sftp'"]
    assert all(lab.exec_requests(h, m) == [] for h, m in others.items())


def test_changed_or_unknown_host_key_makes_ssh_fail(lab, tmp_path):
    since = lab.mark("tlab1")
    wrong = _wrong_known_hosts(tmp_path, lab)
    base = ["ssh", "-F", str(lab.ssh_config), "-o", "BatchMode=yes"]
    changed = subprocess.run(
        [*base, "-o", f"UserKnownHostsFile={wrong}", "tlab1", "true"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    assert changed.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in changed.stderr
    unknown = subprocess.run(
        [*base, "-o", "UserKnownHostsFile=/dev/null", "tlab1", "true"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    assert unknown.returncode == 255
    assert "Host key verification failed" in unknown.stderr
    assert lab.exec_requests("tlab1", since) == []  # nothing ran


def test_pyinfra_uses_the_inventory_with_host_key_checking(lab, tmp_path):
    pyinfra = [sys.executable, "-m", "pyinfra", "-y"]
    since = {h: lab.mark(h) for h in lab.hosts}
    run = subprocess.run(
        [*pyinfra, str(lab.inventory), "exec", "--", "hostname"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = _ok(run) + run.stderr
    for h in lab.hosts:
        assert f"[{h}] {h}" in out
        assert lab.exec_requests(h, since[h]) == ["command"]
    wrong = _wrong_known_hosts(tmp_path, lab)
    bad = subprocess.run(
        [
            *pyinfra,
            "--data",
            f"ssh_known_hosts_file={wrong}",
            str(lab.inventory),
            "exec",
            "--",
            "hostname",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0
    assert "Host key for" in bad.stdout + bad.stderr


def test_lamina_lab_ssh_returns_the_command_exit_code(lab, capfd):
    assert _lab_cli("ssh", "tlab3", "exit 7") == 7
    assert _lab_cli("ssh", "tlab3", "test", "-d", "/srv") == 0
    capfd.readouterr()
    assert _lab_cli("ssh", "nohost1", "true") == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "no lab host 'nohost1'" in err


# --- systemd as PID 1, persistent disks, reboot: their own lab (systemd_lab: rb1, rb2) -------------

SRVX_UNIT = """\
[Unit]
Description=lamina test: a tmpfs at /srv/x once local file systems are up
After=local-fs.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/mount -t tmpfs {tag} /srv/x
[Install]
WantedBy=multi-user.target
"""


def _reboot_cli(slab, host: str) -> int:
    with slab.active():
        return _lab_cli("reboot", host)


def _hosts_of(slab) -> dict[str, labmod.LabHost]:
    with slab.active():
        return {h.name: h for h in labmod.hosts()}


def _known_hosts_of(slab) -> bytes:
    with slab.active():
        return labmod.known_hosts().read_bytes()


def test_systemd_is_pid1_and_boots_multi_user_with_disks(systemd_lab):
    slab = systemd_lab
    assert slab.hosts == ["rb1", "rb2"]
    out = _ok(
        slab.run(
            "rb1",
            "ps -o comm= -p 1; systemctl is-system-running; systemctl get-default; "
            "systemctl is-active local-fs.target multi-user.target lab-sshd.service; cat /etc/machine-id",
        )
    ).splitlines()
    assert out[0] == "systemd"
    assert out[1] in ("running", "degraded"), out
    assert out[2] == "multi-user.target"
    assert out[3:6] == ["active"] * 3
    assert out[6] != Path("/etc/machine-id").read_text().strip()  # its own, not the machine's
    # disks: real directories on the machine's disk; /run and /tmp stay tmpfs
    fs = _ok(slab.run("rb1", "stat -fc %T /var/lib/lamina /srv /mnt /root /run /tmp")).split()
    assert all(t not in ("tmpfs", "overlayfs") for t in fs[:4]), fs
    assert fs[4:] == ["tmpfs", "tmpfs"]
    with slab.active():
        disk = labmod.disk_dir("rb1")
        assert labmod.info()["init"] == "systemd"
    assert disk is not None and (disk / "up").is_dir()
    assert subprocess.run(["stat", "-fc", "%T", str(disk)], capture_output=True, text=True).stdout.strip() not in (
        "tmpfs",
        "overlayfs",
    )
    # the machine's enabled units (its ssh.service, docker...) are not the host's: a fresh install
    running = _ok(slab.run("rb1", "systemctl list-units --no-legend --plain --type=service --state=running"))
    names = [ln.split()[0] for ln in running.splitlines()]
    assert "lab-sshd.service" in names and "ssh.service" not in names and "docker.service" not in names, names


def test_reboot_keeps_disks_and_etc_runs_enabled_units_loses_mounts(systemd_lab, capfd):
    slab = systemd_lab
    tag = uuid.uuid4().hex[:8]
    files = [f"/var/lib/lamina/lab-{tag}", f"/srv/lab-{tag}", f"/mnt/lab-{tag}", f"/etc/lab-{tag}", f"/root/lab-{tag}"]
    gone = [f"/run/lab-{tag}", f"/tmp/lab-{tag}"]
    unit = SRVX_UNIT.format(tag=f"srvx-{tag}")
    _ok(
        slab.run(
            "rb1",
            f"touch {shlex.join(files + gone)} && mkdir -p /srv/x /mnt/m && mount -t tmpfs before-{tag} /mnt/m && "
            f"printf %s {shlex.quote(unit)} > /etc/systemd/system/srvx.service && systemctl daemon-reload && "
            "systemctl enable --quiet srvx.service && ip addr add 10.233.9.9/32 dev lo",
        )
    )
    before = _hosts_of(slab)
    known = _known_hosts_of(slab)
    since = slab.mark("rb1")

    capfd.readouterr()
    assert _reboot_cli(slab, "rb1") == 0
    assert re.search(r"^lab reboot: rb1 \(10\.233\.0\.11\) back in [0-9.]+ s$", capfd.readouterr().out, re.M)

    after = _hosts_of(slab)
    assert after["rb1"].pid != before["rb1"].pid and after["rb2"].pid == before["rb2"].pid
    assert after["rb1"].address == before["rb1"].address
    # the reboot itself made no session on the host; host keys unchanged, checking still passes
    assert slab.exec_requests("rb1", since) == []
    assert _known_hosts_of(slab) == known
    out = _ok(
        slab.run(
            "rb1",
            f"for f in {shlex.join(files + gone)}; do test -e $f && echo $f; done; findmnt -rno SOURCE /srv/x; "
            "findmnt /mnt/m >/dev/null && echo mnt-m-mounted; test -d /mnt/m && echo mnt-m-dir; "
            "systemctl is-active srvx.service; systemctl is-enabled srvx.service; "
            "ip -o addr show dev lo | grep -c 10.233.9.9; systemctl is-system-running; true",
        )
    ).splitlines()
    assert out[: len(files)] == files  # disks and the root's upper (/etc) kept; /run, /tmp not
    assert out[len(files) :] == [f"srvx-{tag}", "mnt-m-dir", "active", "enabled", "0", out[-1]], out
    assert out[-1] in ("running", "degraded")
    assert f"before-{tag}" not in _ok(slab.run("rb1", "cat /proc/self/mountinfo"))
    # rb2 saw nothing of it
    assert _ok(slab.run("rb2", f"ls {shlex.join(files)} /srv/x 2>/dev/null; true")) == ""
    # ssh with the lab's known_hosts (StrictHostKeyChecking yes) works; a wrong key still fails
    wrong = subprocess.run(
        ["ssh", "-F", str(slab.ssh_config), "-o", "BatchMode=yes", "-o", "UserKnownHostsFile=/dev/null", "rb1", "true"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    assert wrong.returncode == 255 and "Host key verification failed" in wrong.stderr
    # the state is on the machine's disk, in the host's disk dir; a second reboot does it again
    with slab.active():
        disk = labmod.disk_dir("rb1")
    assert (disk / "lamina" / f"lab-{tag}").is_file() and (disk / "up" / "etc" / f"lab-{tag}").is_file()
    assert slab.reboot("rb1").pid != after["rb1"].pid
    assert _ok(slab.run("rb1", f"findmnt -rno SOURCE /srv/x; ls /etc/lab-{tag}")).split() == [
        f"srvx-{tag}",
        f"/etc/lab-{tag}",
    ]


def test_reboot_errors_are_one_line(systemd_lab, lab, capfd):
    capfd.readouterr()
    assert _reboot_cli(systemd_lab, "rb9") == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "no lab host 'rb9'" in err
    # the shared lab has tmpfs disks: a reboot would wipe them, so it is refused, host untouched
    name = lab.hosts[0]
    pid = labmod.host(name).pid
    assert _lab_cli("reboot", name) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "tmpfs disks" in err, err
    assert labmod.host(name).pid == pid and labmod.status()[0]["pid"] == pid


def test_sshd_host_with_persistent_disks_reboots_and_runs_its_rc_local():
    """Without systemd, a host with persistent disks runs its own /etc/rc.local at boot, before sshd."""
    env = {"LAMINA_LAB_DIR": "/run/lamina/rebootlab-r", "LAMINA_LAB_PREFIX": "rbr", "LAMINA_LAB_NET": "10.233.1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        (h,) = labmod.up(1, init="sshd", disks="persistent")
        argv = ["ssh", "-F", str(labmod.ssh_config()), "-o", "BatchMode=yes", h.name]

        def run(cmd: str) -> str:
            return _ok(subprocess.run([*argv, cmd], stdin=subprocess.DEVNULL, capture_output=True, text=True))

        assert run("ps -o comm= -p 1") == "sshd"
        rc_local = "#!/bin/sh\nmount -t tmpfs rcz /srv/z\n"
        run(f"mkdir -p /srv/z && printf %s {shlex.quote(rc_local)} > /etc/rc.local && chmod +x /etc/rc.local")
        assert labmod.reboot(h.name).pid != h.pid
        assert run("findmnt -rno SOURCE /srv/z") == "rcz"
    finally:
        labmod.down()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# Destructive for systemd_lab: keep it last of the systemd_lab tests.
def test_systemd_lab_down_removes_disks_and_mounts(systemd_lab):
    slab = systemd_lab
    with slab.active():
        disks = labmod.info()["disks_dir"]
        assert disks and Path(disks).is_dir()
        assert _lab_cli("down") == 0
        assert labmod.hosts() == []
    assert not Path(disks).exists() and not Path(slab.env["LAMINA_LAB_DIR"]).exists()
    mounts = Path("/proc/self/mountinfo").read_text()
    assert disks not in mounts and "rebootlab" not in mounts
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not re.search(r"^rb[0-9]+\b", out, re.M), out
    for cgroot in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        assert not list(Path(cgroot).glob("lamina-rb[0-9]*"))


# Destructive: keep it last in this file, and leave the lab up as the fixture made it.
def test_up_is_idempotent_and_down_is_clean(lab, capfd):
    try:
        hosts = labmod.up()  # lab already up (the FLEET of $LAMINA_LAB_HOSTS): restarts it from scratch
        assert [h.name for h in hosts] == lab.hosts
        assert _netns_of_lab() == lab.hosts
        assert all(_ok(lab.run(h, "hostname")) == h for h in lab.hosts)

        os.kill(hosts[1].pid, 9)  # a host that died must not stop down
        assert _lab_cli("down") == 0
        assert labmod.hosts() == [] and labmod.status() == []
        assert not labmod.lab_dir().exists()
        assert _netns_of_lab() == []
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert not re.search(r"^\d+: tlab", links, re.M), links
        capfd.readouterr()
        assert _lab_cli("status") == 0
        assert "lab down" in capfd.readouterr().out
        assert _lab_cli("ssh", "tlab1", "true") == 1
        assert "down" in capfd.readouterr().err
        labmod.down()  # down on a downed lab
    finally:
        labmod.up()
    assert [r["sshd"] for r in labmod.status()] == ["yes"] * 3
