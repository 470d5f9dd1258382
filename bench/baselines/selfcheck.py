"""Self-check of the benchmark baselines on a lab of 3 hosts: for each approach and N, reset the
hosts, run the first converge, check that each host has exactly the 3N expected mounts, run the
no-op re-run twice and check that nothing changed (pyinfra and Ansible must also report 0 changes).
Prints wall time and remote commands (sshd sessions) per host of each run, and the changes the tool
reports (pyinfra: operations x hosts, its "Grand total" Success; Ansible: tasks x hosts, PLAY RECAP).

    .venv/bin/python bench/baselines/selfcheck.py [N ...]      (as root; default N = 10)

Uses the lab of LAMINA_LAB_DIR (default its own, /run/lamina/helperlab); starts it if it is down
and then stops it at the end.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
for _key, _value in {"LAMINA_LAB_DIR": "/run/lamina/helperlab", "LAMINA_LAB_PREFIX": "hb",
                     "LAMINA_LAB_NET": "10.235.0"}.items():
    os.environ.setdefault(_key, _value)

from bench import baselines  # noqa: E402
from lamina import lab  # noqa: E402


def on_hosts(hosts, fn) -> list:
    with ThreadPoolExecutor(len(hosts)) as pool:
        return list(pool.map(fn, hosts))


def ssh(host, script: str) -> str:
    done = subprocess.run(lab.ssh_argv(host.name, ["sh", "-s"]), input=script, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{host.name}: remote script failed:\n{done.stderr}")
    return done.stdout


def run(argv: list[str], hosts) -> tuple[float, list[int], str]:
    """Run one converge: wall time, sessions per host, output."""
    marks = [lab.mark(h.name) for h in hosts]
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.monotonic() - start
    if done.returncode:
        raise SystemExit(f"{argv} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    sessions = [len(lab.exec_requests(h.name, since=m)) for h, m in zip(hosts, marks, strict=True)]
    return elapsed, sessions, done.stdout + done.stderr


def reported_changes(approach: str, output: str) -> int | None:
    """Changes the tool says it made: pyinfra's "Grand total" Success column, Ansible's recap."""
    if approach == "pyinfra":
        _hosts, success, error, _nochange = re.search(r"Grand total\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", output).groups()
        assert error == "-", output
        return 0 if success == "-" else int(success)
    if approach == "ansible":
        recap = re.findall(r"changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", output)
        assert recap and all(u == f == "0" for _, u, f in recap), output
        return sum(int(c) for c, _, _ in recap)
    return None


def check_mounts(approach: str, n: int, host) -> list[str]:
    """Problems with the host's mounts under ROOT: exactly the 3N expected, with the right sources."""
    mounts = []
    for line in ssh(host, "cat /proc/self/mountinfo").splitlines():
        fields = line.split()
        sep = fields.index("-")
        mounts.append({"id": fields[0], "parent": fields[1], "dev": fields[2], "root": fields[3],
                       "path": fields[4], "fstype": fields[sep + 1], "super": fields[sep + 3].split(",")})
    prefix = baselines.root(approach) + "/"
    mine = {m["path"]: m for m in mounts if m["path"].startswith(prefix)}
    others = [m for m in mounts if not m["path"].startswith(prefix)]
    want = baselines.expected_mounts(approach, n)
    problems = []
    if len(mine) != sum(m["path"].startswith(prefix) for m in mounts):
        problems.append("a path is mounted more than once")
    if set(mine) != set(want):
        problems.append(f"missing {sorted(set(want) - set(mine))[:3]}, extra {sorted(set(mine) - set(want))[:3]}")
    for path, (kind, src) in want.items():
        m = mine.get(path)
        if m is None:
            continue
        if kind == "overlay":
            c = path.removesuffix("/merged")
            opts = {f"lowerdir={prefix}layer", f"upperdir={src}", f"workdir={c}/work"}
            if m["fstype"] != "overlay" or not opts <= set(m["super"]):
                problems.append(f"{path}: {m['fstype']} {m['super']}")
            continue
        # a bind mount: same device as the mount holding src, and that mount's path + root == src
        holder = max((o for o in others if src.startswith(o["path"].rstrip("/") + "/")), key=lambda o: len(o["path"]))
        overlay = mine.get(path.rsplit("/", 1)[0])
        if m["dev"] != holder["dev"] or holder["path"].rstrip("/") + m["root"] != src:
            problems.append(f"{path}: bind of {m['dev']} {m['root']}, not of {src}")
        if overlay is None or m["parent"] != overlay["id"]:
            problems.append(f"{path}: not on top of its overlay")
    return problems


def snapshot(approach: str, host) -> str:
    """A digest of the host's state under ROOT and BIND: its mounts (ids included) and every file's
    path, mode and ctime."""
    r, b = baselines.root(approach), baselines.bind_root(approach)
    out = ssh(host, f"grep ' {r}/' /proc/self/mountinfo; find {r} {b} -printf '%p %m %C@\\n' | sort")
    return hashlib.sha256(out.encode()).hexdigest()


def check(approach: str, n: int, hosts, workdir: Path) -> list[tuple]:
    argv = baselines.prepare(approach, workdir / approach, n, hosts)
    on_hosts(hosts, lambda h: ssh(h, baselines.reset(approach, n)))
    rows = []
    elapsed, sessions, output = run(argv, hosts)
    rows.append((approach, "first", elapsed, sessions, reported_changes(approach, output)))
    for h, problems in zip(hosts, on_hosts(hosts, lambda h: check_mounts(approach, n, h)), strict=True):
        if problems:
            raise SystemExit(f"{approach} N={n} {h.name}: " + "; ".join(problems))
    before = on_hosts(hosts, lambda h: snapshot(approach, h))
    for k in (1, 2):
        elapsed, sessions, output = run(argv, hosts)
        changes = reported_changes(approach, output)
        rows.append((approach, f"no-op {k}", elapsed, sessions, changes))
        if on_hosts(hosts, lambda h: snapshot(approach, h)) != before:
            raise SystemExit(f"{approach} N={n}: no-op run {k} changed the hosts")
        if changes:
            raise SystemExit(f"{approach} N={n}: no-op run {k} reported {changes} changes:\n{output[-3000:]}")
    return rows


def main(sizes: list[int]) -> None:
    baselines.install()
    started = not lab.hosts()
    if started:
        lab.up(3)
    try:
        hosts = lab.hosts()
        with tempfile.TemporaryDirectory(prefix="bench-baselines-") as tmp:
            for n in sizes:
                print(f"N={n}: {3 * n} mounts per host, {len(hosts)} hosts")
                print(f"  {'approach':9} {'run':8} {'wall s':>7}  {'sessions per host':18} changes")
                for approach in baselines.APPROACHES:
                    for name, what, elapsed, sessions, changes in check(approach, n, hosts, Path(tmp)):
                        told = "-" if changes is None else changes
                        print(f"  {name:9} {what:8} {elapsed:7.2f}  {str(sessions):18} {told}", flush=True)
        print("selfcheck: OK (mounts as expected after the first converge, no-op runs changed nothing)")
    finally:
        if started:
            lab.down()


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [10])
