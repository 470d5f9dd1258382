"""First benchmark (the performance issue will grow this into the full suite): the no-op
re-run of a spec with N containers (each with a volume and a bind mount) on 3 test hosts,
against the floor — one shell script per host over one SSH connection that reads the same
state. Prints a table with ratios measured in the same run and writes bench/results.json.

    .venv/bin/python bench/noop.py [N ...]        (as root; starts and stops its own lab)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAB = {"LAMINA_LAB_DIR": "/run/lamina/benchlab", "LAMINA_LAB_PREFIX": "bn", "LAMINA_LAB_NET": "10.234.0"}
RUNS = 3


def spec(n: int, directory: Path) -> Path:
    from lamina.rootfs import busybox_rootfs

    (directory / "files").mkdir(exist_ok=True)
    busybox_rootfs(directory / "files" / "rootfs.tar")
    body = "".join(f"  c{i}: {{image: base, mounts: [v{i}:/data, /srv/bench/b{i}:/share]}}\n" for i in range(n))
    path = directory / f"n{n}.yml"
    path.write_text(f"images:\n  base: {{steps: [{{add: {{src: rootfs.tar}}}}]}}\ncontainers:\n{body}")
    return path


def lamina(*args: str) -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "lamina.cli", *args], cwd=REPO, check=True, capture_output=True)
    return time.monotonic() - start


def floor(hosts, ssh_config: Path, script: str) -> float:
    """One ssh per host, in parallel, running the same read lamina's fact does."""
    def one(h):
        subprocess.run(["ssh", "-F", str(ssh_config), h.name, script], check=True, capture_output=True)
    start = time.monotonic()
    with ThreadPoolExecutor(len(hosts)) as pool:
        list(pool.map(one, hosts))
    return time.monotonic() - start


def main(sizes: list[int]) -> None:
    os.environ.update(LAB)
    from lamina import facts, lab
    from lamina.runner import host_plan, host_variables  # noqa: F401

    lab.up(3)
    results = []
    try:
        inv = str(REPO / "inventories" / "lab.py")
        with tempfile.TemporaryDirectory() as tmp:
            for n in sizes:
                path = spec(n, Path(tmp))
                first = lamina("apply", "-i", inv, str(path))
                marks = {h.name: lab.mark(h.name) for h in lab.hosts()}
                noop = statistics.median(lamina("apply", "-i", inv, str(path)) for _ in range(RUNS))
                commands = max(len(lab.exec_requests(h, marks[h])) for h in marks) / RUNS
                plan = host_plan(lab.hosts()[0].name, {}, [str(path)])
                script = facts.command(plan)
                base = statistics.median(floor(lab.hosts(), lab.ssh_config(), script) for _ in range(RUNS))
                results.append({"n": n, "first_converge_s": round(first, 3), "noop_s": round(noop, 3),
                                "noop_remote_commands_per_host": commands, "floor_s": round(base, 3),
                                "noop_vs_floor": round(noop / base, 2)})
                print(f"N={n:4}  first converge {first:6.2f}s  no-op {noop:5.2f}s ({commands:.0f} commands/host)"
                      f"  floor {base:5.2f}s  no-op/floor {noop / base:5.2f}x", flush=True)
    finally:
        lab.down()
    (REPO / "bench" / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [10, 50])
