"""The fast path (fastpath.read, runner._quick, runner._converge): one plain `ssh` per host
reads it, and only hosts that differ are converged, on the same OpenSSH connections —
pyinfra is not even imported. A spec too big for one command line still converges.

Counts come from each host's sshd log (one "Starting session" per remote command)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from test_engine import REPO, as_test_user, changes, gone, hosts, lamina, mounts  # noqa: F401  (fixture)


def _sessions(lab, marks) -> dict[str, list[str]]:
    return {h: lab.exec_requests(h, marks[h]) for h in lab.hosts}


def test_noop_is_one_remote_command_per_host_and_no_pyinfra(hosts):  # noqa: F811
    lab = hosts
    changes(lab)
    marks = {h: lab.mark(h) for h in lab.hosts}
    out = lamina("apply", "-i", str(lab.inventory), "--json")
    assert all(not r["changed"] and r["unchanged"] for r in json.loads(out.stdout)["hosts"].values())
    assert _sessions(lab, marks) == {h: ["command"] for h in lab.hosts}
    # `plan` with drift is answered by the same single read, on every host
    assert lab.run(lab.hosts[0], "umount /mnt/demo-shared").returncode == 0
    marks = {h: lab.mark(h) for h in lab.hosts}
    plan = lamina("plan", "-i", str(lab.inventory)).stdout.splitlines()
    assert plan[0] == f"{lab.hosts[0]} bind /mnt/demo-shared: not mounted"
    assert _sessions(lab, marks) == {h: ["command"] for h in lab.hosts}


def test_only_the_drifted_host_changes_and_pyinfra_is_never_imported(hosts, tmp_path):  # noqa: F811
    lab = hosts
    changes(lab)
    victim = lab.hosts[1]
    assert lab.run(victim, "umount /mnt/demo-shared").returncode == 0
    marks = {h: lab.mark(h) for h in lab.hosts}
    blocker = tmp_path / "pyinfra"  # first on the path: importing pyinfra fails the run
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('pyinfra imported on the fast path')\n")
    out = lamina("apply", "-i", str(lab.inventory), "--json", env={"PYTHONPATH": str(tmp_path)})
    report = json.loads(out.stdout)["hosts"]
    assert {h: [c["object"] for c in r["changed"]] for h, r in report.items()} == \
        {h: ["bind /mnt/demo-shared"] if h == victim else [] for h in lab.hosts}
    assert list(report) == lab.hosts  # inventory order
    sessions = _sessions(lab, marks)
    assert all(sessions[h] == ["command"] for h in lab.hosts if h != victim), sessions
    # one session: the connection's shell reads, takes the lock, reads again and runs the script
    assert sessions[victim] == ["command"] and "/mnt/demo-shared" in mounts(lab, victim), sessions
    # the converge read the host once more and remembered it in sync: the re-run needs no planner
    again = lamina("apply", "-i", str(lab.inventory), env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert re.search(r"^\S+: 0 changed", again.stdout, re.M) and "| lamina.runner" not in again.stderr


# lamina's CLI with every script it sends a host's shell counted (sshrun.Connections.run),
# printed as JSON on the last line of stderr
COUNTING = """
import atexit, json, sys
from collections import Counter
from lamina import cli, sshrun
counts, run = Counter(), sshrun.Connections.run
def counted(self, name, script, *args, **kwargs):
    counts[name] += 1
    return run(self, name, script, *args, **kwargs)
sshrun.Connections.run = counted
code = cli.main(sys.argv[1:])
print(json.dumps(counts), file=sys.stderr)
sys.exit(code)
"""


def test_a_drifted_host_converges_in_three_round_trips(hosts, tmp_path):  # noqa: F811
    """The fast read; the lock and a second read, in one script; then the changes and the
    read that the next run's fast path compares with, in one script. The other hosts: their
    read only."""
    lab = hosts
    changes(lab)
    victim = lab.hosts[0]
    assert lab.run(victim, "umount /mnt/demo-shared").returncode == 0
    args, env = as_test_user(("apply", "-i", str(lab.inventory)), None)
    out = subprocess.run([sys.executable, "-c", COUNTING, *args], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env={**os.environ, **env})
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(rf"^{victim}: 1 changed", out.stdout, re.M), out.stdout
    assert json.loads(out.stderr.splitlines()[-1]) == {h: 3 if h == victim else 1 for h in lab.hosts}
    # and what that last script read is what the re-run finds: in sync, one read per host, no planner
    again = subprocess.run([sys.executable, "-c", COUNTING, *args], cwd=REPO, capture_output=True, text=True,
                           timeout=300, env={**os.environ, **env, "PYTHONPROFILEIMPORTTIME": "1"})
    assert again.returncode == 0 and re.search(rf"^{victim}: 0 changed", again.stdout, re.M), again.stdout
    assert "| lamina.runner" not in again.stderr
    assert json.loads(again.stderr.splitlines()[-1]) == {h: 1 for h in lab.hosts}


def test_an_inventory_only_pyinfra_can_read_gives_the_same_answer(hosts, tmp_path):  # noqa: F811
    """Host data the OpenSSH path does not mirror (here ssh_connect_retries) sends every
    host through pyinfra's connector: same report, and still at most 2 commands."""
    lab = hosts
    inventory = tmp_path / "inv.py"
    inventory.write_text(
        f"exec(open({str(lab.inventory)!r}).read())\n"
        "lab = [(name, {**data, 'ssh_connect_retries': 1}) for name, data in lab]\n")
    first = changes(lab)
    marks = {h: lab.mark(h) for h in lab.hosts}
    out = lamina("apply", "-i", str(inventory), "--json")
    second = json.loads(out.stdout)["hosts"]
    assert {h: r["unchanged"] for h, r in second.items()} == \
        {h: [c["object"] for c in r["changed"] if c["object"] != "boot mounts"] for h, r in first.items()}
    assert all(1 < len(s) <= 2 for s in _sessions(lab, marks).values())


def test_a_spec_over_the_command_line_limit_converges(hosts, tmp_path):  # noqa: F811
    """150 binds make a fact command and a script far over Linux's 128 KiB per argument."""
    lab = hosts
    host = lab.hosts[0]
    body = "".join(f"  b{i}: {{source: /srv/many-source/with-a-long-directory-name/s{i},"
                   f" target: /mnt/many/t{i}, create_source: true}}\n" for i in range(150))
    spec = tmp_path / "many.yml"
    spec.write_text("binds:\n" + body)
    first = lamina("apply", "-i", str(lab.inventory), "--limit", host, str(spec)).stdout.splitlines()
    assert first[-1] == f"{host}: 151 changed, 0 unchanged"  # 150 binds + the boot script
    assert len([m for m in mounts(lab, host) if m.startswith("/mnt/many/")]) == 150
    marks = {h: lab.mark(h) for h in lab.hosts}
    again = lamina("apply", "-i", str(lab.inventory), "--limit", host, str(spec)).stdout.splitlines()
    assert again == [f"{host}: 0 changed, 150 unchanged"]
    assert lab.exec_requests(host, marks[host]) == ["command"]


def test_an_unreachable_host_fails_alone_on_the_fast_read(hosts, tmp_path):  # noqa: F811
    """A host the fast read cannot connect to goes to pyinfra, which reports it; the others converge."""
    import re
    import time

    lab = hosts
    inventory = tmp_path / "inv.py"
    inventory.write_text(f"exec(open({str(lab.inventory)!r}).read())\n"
                         "lab = lab + [('ghost', dict(lab[0][1], ssh_hostname='10.231.0.250'))]\n")
    start = time.monotonic()
    out = lamina("apply", "-i", str(inventory), check=1)
    assert re.search(r"^ghost: FAILED: .+", out.stdout, re.M), out.stdout
    assert all(re.search(rf"^{h}: \d+ changed, 0 unchanged$", out.stdout, re.M) for h in lab.hosts), out.stdout
    assert time.monotonic() - start < 60


def test_sessions_are_opened_on_the_master_without_an_ssh_client(hosts):  # noqa: F811
    """mux.Session, as the shells, locks and layer streams use it: the master runs the command
    with lamina's own pipes (no mux client process), gives its output, stderr and exit status;
    a dropped session ends the remote side's input; with the master gone, an ssh client
    connects afresh instead."""
    import time

    from lamina import mux, sshrun

    lab = hosts
    h = lab.hosts[0]
    with sshrun.Connections.for_inventory(str(lab.inventory), [h], False) as conns:
        s = conns.open(h, "cat; echo to-stderr >&2; exit 7")
        assert isinstance(s, mux.Session)
        s.stdin.write(b"x" * 300_000)  # more than a pipe holds: the master drains it as it goes
        s.stdin.close()
        assert len(s.stdout.read()) == 300_000 and s.stderr.read() == b"to-stderr\n"
        assert s.wait(timeout=30) == 7 and s.poll() == 7
        cut = conns.open(h, "cat >/dev/null; echo input-ended > /tmp/mux-cut")
        cut.stdin.write(b"partial")
        cut.stdin.flush()
        cut.kill()
        deadline = time.monotonic() + 10
        while lab.run(h, "cat /tmp/mux-cut 2>/dev/null").stdout != "input-ended\n" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lab.run(h, "cat /tmp/mux-cut; rm -f /tmp/mux-cut").stdout == "input-ended\n"
        conns.masters[h].terminate()
        conns.masters[h].wait()
        again = conns.open(h, "echo fresh")
        assert not isinstance(again, mux.Session)
        out, _ = again.communicate(timeout=30)
        assert again.returncode == 0 and out == b"fresh\n"


def test_an_in_sync_rerun_ends_at_once_and_leaves_no_connection_behind(hosts, tmp_path):  # noqa: F811
    """The in-sync re-run ends without waiting for its connections to close (sshrun close
    with wait=False, cli.entry): each master was told to go and does, and the run's
    control sockets and their directory are gone."""
    lab = hosts
    changes(lab)
    control = tmp_path / "control"  # the run's control directory is made under $TMPDIR
    control.mkdir()
    out = lamina("apply", "-i", str(lab.inventory), env={"TMPDIR": str(control)})
    assert all(re.search(rf"^{h}: 0 changed, \d+ unchanged$", out.stdout, re.M) for h in lab.hosts), out.stdout
    assert list(control.iterdir()) == []
    assert gone(control)


def test_every_master_is_told_to_exit_at_once(hosts, tmp_path):  # noqa: F811
    """mux.terminate: every master asked before any answer is awaited; each exits, and a
    control path with no master behind it is named (sshrun sends that one SIGTERM)."""
    from lamina import mux, sshrun

    lab = hosts
    with sshrun.Connections.for_inventory(str(lab.inventory), lab.hosts, False) as conns:
        assert all(conns.run(h, "true").ok for h in lab.hosts)  # every master is up
        paths = [conns._socket(conns.index[h]) for h in lab.hosts]
        nobody = str(tmp_path / "no-master")
        assert mux.terminate([*paths, nobody], timeout=5) == [nobody]
        for h in lab.hosts:
            conns.masters[h].wait(timeout=10)  # gone (255: its sessions were cut), not timed out
