"""lamina inside a user's own pyinfra deploy (lamina.pyinfra, roles/example/deploy.py): real
`pyinfra` runs on the mixed fleet, with --limit, --dry, --sudo as a non-root user, and `_if`
on lamina's result."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from test_engine import REPO, hosts  # noqa: F401  (fixture)

DEPLOY = "roles/example/deploy.py"
MOUNTS = ("/srv/example/www", "/srv/example/scratch/merged", "/srv/example/scratch/merged/data")


def pyinfra(lab, *args: str, user: str | None = None, yes: bool = True) -> subprocess.CompletedProcess:
    """A real `pyinfra` run of the example deploy (without -y, --dry shows the changes it detects)."""
    env = {**os.environ, **({"LAMINA_LAB_USER": user} if user else {})}
    out = subprocess.run([sys.executable, "-m", "pyinfra", *(["-y"] if yes else []), str(lab.inventory), DEPLOY, *args],
                         cwd=REPO,
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def mounted(lab, host: str) -> list[bool]:
    return [lab.run(host, f"mountpoint -q {m}").returncode == 0 for m in MOUNTS]


def test_dry_run_changes_nothing_and_limit_touches_one_host(hosts):  # noqa: F811
    lab = hosts
    one = lab.hosts[-1]  # the trixie host
    dry = pyinfra(lab, "--dry", yes=False)
    assert re.search(rf"lamina: example storage +{len(lab.hosts)} \(", dry.stderr), dry.stderr  # pyinfra logs there
    for h in lab.hosts:
        assert lab.run(h, "test -e /srv/example").returncode != 0, h  # not even pyinfra's directory
        assert not any(mounted(lab, h))
    pyinfra(lab, "--limit", one)
    assert mounted(lab, one) == [True, True, True]
    assert lab.run(one, "cat /srv/example/www/index.html").stdout.startswith("<!doctype html>")
    for h in lab.hosts[:-1]:
        assert lab.run(h, "test -e /srv/example").returncode != 0, h


def test_if_follows_lamina_and_a_rerun_changes_nothing_even_through_sudo(hosts):  # noqa: F811
    lab = hosts
    first = pyinfra(lab, "--sudo", user="lamina")
    assert "lamina: example storage" in first.stderr
    stamps = {h: lab.run(h, "cat /srv/example/storage-changed").stdout for h in lab.hosts}
    assert all(s.strip().isdigit() for s in stamps.values()), stamps  # lamina changed: the _if op ran
    for h in lab.hosts:
        assert mounted(lab, h) == [True, True, True]
    marks = {h: lab.mark(h) for h in lab.hosts}
    again = pyinfra(lab, "--sudo", user="lamina")
    # no change from lamina, so the _if operation did not run: the stamp is the first run's
    assert {h: lab.run(h, "cat /srv/example/storage-changed").stdout for h in lab.hosts} == stamps
    assert "lamina: example storage" in again.stderr
    for h in lab.hosts:
        assert lab.exec_requests(h, marks[h])  # pyinfra did connect
    drifted = lab.hosts[0]
    assert lab.run(drifted, "umount /srv/example/www").returncode == 0  # repaired, and only there
    pyinfra(lab, "--sudo", user="lamina")
    assert mounted(lab, drifted) == [True, True, True]
    now = {h: lab.run(h, "cat /srv/example/storage-changed").stdout for h in lab.hosts}
    assert {h for h in lab.hosts if now[h] != stamps[h]} == {drifted}
