"""End to end on the test hosts: lamina plan/apply/verify over real SSH, real overlayfs.

Each test starts from clean hosts (no lamina mounts, empty /srv, /mnt, state dir).
"""

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

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "roles" / "demo" / "spec.yml"

CLEAN = r"""
for m in $(awk '$5 ~ "^/(srv|mnt|var/lib/lamina)/" {print $5}' /proc/self/mountinfo | sort -r); do umount -l "$m"; done
rm -rf /srv/* /mnt/* /var/lib/lamina/*
for i in 1 2 3; do mkdir -p /srv/demo/low$i; echo "from low$i" > /srv/demo/low$i/layer.txt; done
echo only-low1 > /srv/demo/low1/f1.txt
"""


# LAMINA_TEST_USER=lamina: every lamina command that works on hosts logs in as that lab user and
# goes through sudo (scripts/test.sh runs the integration tests once more that way).
TEST_USER = os.environ.get("LAMINA_TEST_USER")
HOST_COMMANDS = frozenset({"plan", "apply", "verify", "inspect", "diff", "commit", "cp", "reset", "volume", "gc",
                           "export"})


def as_test_user(args: tuple[str, ...], env: dict[str, str] | None) -> tuple[tuple[str, ...], dict[str, str]]:
    """The command line and environment of a lamina command, as LAMINA_TEST_USER when set."""
    env = dict(env or {})
    if TEST_USER and args and args[0] in HOST_COMMANDS and "LAMINA_LAB_USER" not in env:
        env["LAMINA_LAB_USER"] = TEST_USER
        if "--sudo" not in args:
            args = (*args, "--sudo")
    return args, env


def lamina(*args: str, check: int | None = 0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    args, env = as_test_user(args, env)
    out = subprocess.run([sys.executable, "-m", "lamina.cli", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env={**os.environ, **env})
    if check is not None:
        assert out.returncode == check, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def demo_copy(tmp_path: Path, text: str) -> Path:
    """A changed copy of the demo spec that still finds the demo's files/."""
    (tmp_path / "files").symlink_to(DEMO.parent / "files")
    spec = tmp_path / "spec.yml"
    spec.write_text(text)
    return spec


@pytest.fixture
def hosts(lab, demo_rootfs):
    """Clean test hosts, with a file in each of the demo's lower dirs."""
    for h in lab.hosts:
        r = lab.run(h, CLEAN)
        assert r.returncode == 0, r.stderr
    return lab


USERLANDS = ("bookworm", "trixie")  # conftest.FLEET


def on(hosts: list[str], userland: str) -> str:
    """The first of `hosts` whose userland (lamina lab's lower dir) is `userland`."""
    from lamina import lab as labmod

    for h in hosts:
        if (labmod.host(h).lower == "/") == (userland == "bookworm"):
            return h
    raise AssertionError(f"no {userland} host among {hosts}")


def changes(lab, *args: str, cmd: str = "apply", spec: Path | None = None) -> dict:
    out = lamina(cmd, "-i", str(lab.inventory), *([str(spec)] if spec else []), "--json", *args)
    return json.loads(out.stdout)["hosts"]


def changed_objects(report: dict) -> dict[str, list[str]]:
    return {h: [c["object"] for c in r["changed"]] for h, r in report.items()}


def gone(control: Path) -> bool:
    """Whether every process naming the run's control directory (its ssh masters) has exited,
    waiting up to 10 s for them."""
    def naming() -> list[str]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                argv = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            if str(control) in argv:
                found.append(argv)
        return found

    deadline = time.monotonic() + 10
    while naming() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not naming()


def mounts(lab, host: str) -> list[str]:
    out = lab.run(host, "awk '$5 ~ \"^/(srv|mnt)/\" {print $5}' /proc/self/mountinfo")
    return out.stdout.split()


def test_converge_then_noop_with_at_most_two_remote_commands(hosts):
    lab = hosts
    first = changes(lab)
    assert all(r["changed"] and not r["unchanged"] and not r["failed"] for r in first.values()), first
    n = len([c for c in first[lab.hosts[0]]["changed"] if c["object"] != "boot mounts"])  # the plan's objects
    for h in lab.hosts:
        assert lab.run(h, "cat /srv/demo/merged/layer.txt").stdout == "from low3\n"  # highest wins
        assert lab.run(h, "cat /srv/demo/merged/f1.txt").stdout == "only-low1\n"
        assert set(mounts(lab, h)) == {"/srv/demo/merged", "/srv/demo/merged/data", "/srv/demo/merged/shared",
                                       "/srv/demo/merged/scratch", "/mnt/demo-shared"}
    marks = {h: lab.mark(h) for h in lab.hosts}
    second = lamina("apply", "-i", str(lab.inventory))
    assert second.stdout.splitlines() == [f"{h}: 0 changed, {n} unchanged" for h in lab.hosts]
    for h in lab.hosts:
        n = len(lab.exec_requests(h, marks[h]))
        assert 1 <= n <= 2, f"{h}: a no-op run issued {n} remote commands"


def test_manual_umount_on_one_host_is_planned_and_repaired_alone(hosts):
    lab = hosts
    changes(lab)
    victim = lab.hosts[1]
    assert lab.run(victim, "umount /mnt/demo-shared").returncode == 0
    plan = lamina("plan", "-i", str(lab.inventory)).stdout.splitlines()
    assert [line for line in plan if not line.endswith("unchanged")] == [f"{victim} bind /mnt/demo-shared: not mounted"]
    assert changed_objects(changes(lab)) == {h: ["bind /mnt/demo-shared"] if h == victim else [] for h in lab.hosts}
    assert "/mnt/demo-shared" in mounts(lab, victim)


def test_wrong_lower_stack_is_remounted_with_its_inner_mounts(hosts):
    lab = hosts
    changes(lab)
    h = lab.hosts[0]
    r = lab.run(h, "umount -R /srv/demo/merged && mount -t overlay demo -o "
                   "lowerdir=/srv/demo/low1:/srv/demo/low2,upperdir=/srv/demo/upper,workdir=/srv/demo/work "
                   "/srv/demo/merged && cat /srv/demo/merged/layer.txt")
    assert r.stdout == "from low1\n", r.stderr
    report = changes(lab, cmd="plan")
    (overlay,) = [c for c in report[h]["changed"] if c["object"] == "overlay /srv/demo/merged"]
    assert overlay["reasons"] == ["lower stack differs: want [/srv/demo/low3, /srv/demo/low2, /srv/demo/low1], "
                                  "found [/srv/demo/low1, /srv/demo/low2]"]
    assert changed_objects(changes(lab))[h] == ["overlay /srv/demo/merged", "mount /srv/demo/merged/data",
                                                "mount /srv/demo/merged/shared", "mount /srv/demo/merged/scratch"]
    assert lab.run(h, "cat /srv/demo/merged/layer.txt").stdout == "from low3\n"
    assert changed_objects(changes(lab)) == {x: [] for x in lab.hosts}


def test_deleted_work_dir_is_repaired(hosts):
    lab = hosts
    changes(lab)
    h = lab.hosts[2]
    lab.run(h, "rm -rf /srv/demo/work")
    report = changes(lab)
    assert [(c["object"], c["reasons"]) for c in report[h]["changed"]] == [
        ("overlay /srv/demo/merged", ["missing /srv/demo/work"])]
    assert lab.run(h, "stat -c %a /srv/demo/work").stdout == "700\n"


def test_changed_spec_changes_exactly_what_differs(hosts, tmp_path):
    lab = hosts
    changes(lab)
    spec = demo_copy(tmp_path, DEMO.read_text().replace("    read_only: true\n", "    read_only: false\n"))
    # the bind, and the boot script that re-creates it after a reboot
    assert changed_objects(changes(lab, spec=spec)) == {h: ["bind /mnt/demo-shared", "boot mounts"] for h in lab.hosts}
    h = lab.hosts[0]
    assert lab.run(h, "touch /mnt/demo-shared/rw-now").returncode == 0


def test_absent_unmounts_and_keeps_data_then_purge_deletes_it(hosts, tmp_path):
    lab = hosts
    changes(lab)
    h = lab.hosts[0]
    lab.run(h, "echo precious > /srv/demo/merged/written.txt && echo vol > /srv/demo/merged/data/v.txt")
    text = DEMO.read_text().replace("    label: demo\n", "    label: demo\n    state: absent\n")
    spec = demo_copy(tmp_path, text)
    report = changes(lab, spec=spec)
    assert "overlay /srv/demo/merged" in changed_objects(report)[h]
    assert mounts(lab, h) == ["/mnt/demo-shared"]
    assert lab.run(h, "cat /srv/demo/upper/written.txt").stdout == "precious\n"  # data kept
    assert lab.run(h, "cat /var/lib/lamina/volumes/demo-data/_data/v.txt").stdout == "vol\n"
    assert changed_objects(changes(lab, spec=spec)) == {x: [] for x in lab.hosts}  # absent is idempotent
    spec.write_text(text.replace("    state: absent\n", "    state: absent\n    purge: true\n"))
    changes(lab, spec=spec)
    assert lab.run(h, "test -e /srv/demo/upper || test -e /srv/demo/work || echo gone").stdout == "gone\n"
    assert lab.run(h, "cat /srv/demo/low3/layer.txt").stdout == "from low3\n"  # lowers never purged
    assert lab.run(h, "cat /var/lib/lamina/volumes/demo-data/_data/v.txt").stdout == "vol\n"  # volume kept


def test_busy_mount_is_a_clear_error_unless_forced(hosts, tmp_path):
    lab = hosts
    changes(lab)
    h = lab.hosts[0]
    holder = subprocess.Popen(lab.ssh_argv(h, "cd /srv/demo/merged/scratch && exec sleep 60"))
    try:
        time.sleep(0.5)
        spec = demo_copy(tmp_path, DEMO.read_text().replace("tmpfs: {size: 16m}", "tmpfs: {size: 16m}, read_only: true"))
        out = lamina("apply", "-i", str(lab.inventory), str(spec), "--limit", h, check=1)
        assert "cannot unmount /srv/demo/merged/scratch; if it is busy" in out.stdout, out.stdout
        spec.write_text(spec.read_text().replace("    label: demo\n", "    label: demo\n    force: true\n"))
        lamina("apply", "-i", str(lab.inventory), str(spec), "--limit", h)
        assert changed_objects(changes(lab, "--limit", h, spec=spec)) == {h: []}
    finally:
        holder.kill()


def test_verify_passes_on_a_good_host_and_catches_a_wrong_mount(hosts, tmp_path):
    lab = hosts
    changes(lab)
    ok = lamina("verify", "-i", str(lab.inventory), "-q", f"--junitxml={tmp_path}/ok.xml")
    assert "failed" not in ok.stdout and Path(tmp_path, "ok.xml").exists()
    h = lab.hosts[1]
    lab.run(h, "umount /srv/demo/merged/scratch && mount -t tmpfs other /srv/demo/merged/scratch -o ro")
    bad = lamina("verify", "-i", str(lab.inventory), "-q", check=1)
    assert f"{h}: mount /srv/demo/merged/scratch" in bad.stdout and "want read-write, found read-only" in bad.stdout
    assert bad.stdout.count("FAILED") == 1, bad.stdout
    # the merged-view check stands on its own: a file that shadows the highest layer fails it
    lab.run(h, "umount /srv/demo/merged/scratch; mount -t tmpfs tmpfs /srv/demo/merged/scratch -o size=16m; "
               "echo written > /srv/demo/merged/layer.txt")  # copied up: upper is now the highest
    lamina("verify", "-i", str(lab.inventory), "-q")  # upper's version is the highest: still right
    lab.run(h, "mount --bind /srv/demo/low1/layer.txt /srv/demo/merged/layer.txt")
    bad = lamina("verify", "-i", str(lab.inventory), "-q", check=1)
    assert "layer.txt: /srv/demo/merged does not show /srv/demo/upper's version" in bad.stdout


def test_bad_spec_exits_2_and_touches_no_host(hosts, tmp_path):
    lab = hosts
    text = DEMO.read_text().replace("    upper:", "    uper:")
    spec = demo_copy(tmp_path, text)
    line = text.splitlines().index("    uper: {{ prefix }}/upper") + 1
    marks = {h: lab.mark(h) for h in lab.hosts}
    out = lamina("validate", str(spec), check=2)
    assert f"{spec}:{line}:5: overlays.demo.uper: unknown key 'uper' (did you mean 'upper'?)" in out.stderr
    for cmd in ("plan", "apply", "verify"):
        out = lamina(cmd, "-i", str(lab.inventory), str(spec), check=2)
        assert "Traceback" not in out.stderr and f"{spec}:{line}:5:" in out.stderr
    assert all(lab.exec_requests(h, marks[h]) == [] for h in lab.hosts)


def test_missing_bind_source_fails_that_host_before_any_change(hosts, tmp_path):
    lab = hosts
    spec = tmp_path / "spec.yml"
    spec.write_text(textwrap.dedent("""\
        volumes: {early: {}}
        binds:
          b1: {source: /srv/{{ inventory_hostname }}-only, target: /mnt/b1}
        """))
    h = lab.hosts[0]
    lab.run(h, f"mkdir /srv/{h}-only")
    out = lamina("apply", "-i", str(lab.inventory), str(spec), check=1)
    for other in lab.hosts[1:]:
        assert f"{other}: FAILED: bind /mnt/b1: /srv/{other}-only does not exist" in out.stdout
        assert lab.run(other, "test -e /var/lib/lamina/volumes/early || echo untouched").stdout == "untouched\n"
    assert f"{h}: 3 changed" in out.stdout  # the volume, the bind, and the boot script that re-mounts it


def test_unreachable_host_fails_alone(hosts, tmp_path):
    lab = hosts
    inv = tmp_path / "inv.py"
    inv.write_text(textwrap.dedent(f"""\
        exec(open({str(lab.inventory)!r}).read())
        lab = lab + [("ghost", dict(lab[0][1], ssh_hostname="10.231.0.250", ssh_connect_retries=0))]
        """))
    out = lamina("apply", "-i", str(inv), check=1)
    assert "ghost: FAILED:" in out.stdout
    assert all(re.search(rf"^{h}: \d+ changed, 0 unchanged$", out.stdout, re.M) for h in lab.hosts), out.stdout


def test_pyinfra_cli_runs_the_roles_and_reruns_clean(hosts):
    lab = hosts
    cmd = [sys.executable, "-m", "pyinfra", "-y", str(lab.inventory), "deploy.py"]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert all(lab.run(h, "cat /srv/demo/merged/layer.txt").stdout == "from low3\n" for h in lab.hosts)
    marks = {h: lab.mark(h) for h in lab.hosts}
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0
    out = second.stdout + second.stderr
    assert out.count("No changes") == len(lab.hosts), out
    assert all(len(lab.exec_requests(h, marks[h])) <= 2 for h in lab.hosts)
