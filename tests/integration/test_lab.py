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


# Destructive: keep it last in this file, and leave the lab up as the fixture made it.
def test_up_is_idempotent_and_down_is_clean(lab, capfd):
    try:
        hosts = labmod.up(3)  # lab already up: restarts it from scratch
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
        labmod.up(3)
    assert [r["sshd"] for r in labmod.status()] == ["yes"] * 3
