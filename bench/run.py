"""lamina's benchmark suite: `./scripts/bench.sh [--quick]` (as root; starts its own test hosts).

Every figure is measured in the same run as its baseline and printed as a ratio:

- specs of N containers, each with a volume and a bind mount, on 3 hosts: first converge and
  no-op re-run of lamina, of stock pyinfra operations, of an Ansible playbook, and of the floor
  (one hand-written sh script per host over one ssh); wall time and remote commands per host;
- layer shipping: a 200 MiB layer of 5,000 files to 3 hosts against `tar c | ssh HOST tar x`
  to the same hosts in parallel, and the re-run with the layer present;
- deep stacks: remounting a 128- and a 500-layer container against the bare `mount` over ssh;
- fan-out: first converge of the demo on 1 host and on 20, by lamina and by the demo's floor
  (one hand-written sh script per host over one ssh: baselines/demo_floor.py).

Writes bench/results.json, bench/results.png and BENCHMARKS.md (with each target met or not).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
os.environ.update({"LAMINA_LAB_DIR": "/run/lamina/benchlab", "LAMINA_LAB_PREFIX": "bn",
                   "LAMINA_LAB_NET": "10.234.0"})
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

import baselines  # noqa: E402

from lamina import lab  # noqa: E402

LAMINA = [sys.executable, "-m", "lamina.cli"]
INVENTORY = ""  # lamina's inventory: the running lab's hosts as a user's file (`write_inventory`)
# What lamina leaves on a host: every mount under its dirs, then the dirs.
LAMINA_RESET = r"""
for m in $(awk '$5 ~ "^/(srv|mnt|var/lib/lamina)/" {print $5}' /proc/self/mountinfo | sort -r); do umount -l "$m"; done
rm -rf /srv/* /mnt/* /var/lib/lamina/* /etc/rc.local
"""


def write_inventory(work: Path) -> str:
    """The running lab's hosts as a user's inventory file: the data inventories/lab.py gives
    them now, written out. lamina runs with it, as with any user's inventory, rather than
    importing the lab module to read the lab's state file on every run (~12 ms, a
    test-harness cost)."""
    import runpy

    global INVENTORY
    hosts = runpy.run_path(str(REPO / "inventories" / "lab.py"))["lab"]
    path = work / f"inventory-{len(hosts)}.py"
    path.write_text(f"# the bench lab's hosts, as a user's inventory file\nbench = {hosts!r}\n")
    INVENTORY = str(path)
    return INVENTORY


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timed(argv: Sequence[str], **kw) -> float:
    start = time.monotonic()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, **kw)
    elapsed = time.monotonic() - start
    if done.returncode:
        raise SystemExit(f"bench: {shlex.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return elapsed


def on_hosts(script: str, hosts: Sequence[str] | None = None) -> None:
    names = hosts or [h.name for h in lab.hosts()]
    with ThreadPoolExecutor(len(names)) as pool:
        for name, done in zip(names, pool.map(lambda h: subprocess.run(
                lab.ssh_argv(h, [script]), capture_output=True, text=True), names), strict=True):
            if done.returncode:
                raise SystemExit(f"bench: on {name}: {done.stderr.strip()}")


def count_mounts(prefix: str) -> int:
    """Mounts on the first host whose mount point starts with `prefix` (an awk regex)."""
    host = lab.hosts()[0].name
    awk = ["awk", f'$5 ~ "^{prefix}" {{n++}} END {{print n+0}}', "/proc/self/mountinfo"]
    out = subprocess.run(lab.ssh_argv(host, [shlex.join(awk)]), capture_output=True, text=True)
    return int(out.stdout.strip() or 0)


# --- specs of N containers -------------------------------------------------------------------


def lamina_spec(n: int, directory: Path) -> Path:
    from lamina.rootfs import busybox_rootfs

    (directory / "files").mkdir(parents=True, exist_ok=True)
    if not (directory / "files" / "rootfs.tar").exists():
        busybox_rootfs(directory / "files" / "rootfs.tar")
    body = "".join(f"  c{i}: {{image: base, mounts: [v{i}:/data, /srv/bench/lamina/b{i}:/share]}}\n" for i in range(n))
    path = directory / f"n{n}.yml"
    path.write_text(f"images:\n  base: {{steps: [{{add: {{src: rootfs.tar}}}}]}}\ncontainers:\n{body}")
    return path


def approach_argv(name: str, n: int, work: Path) -> tuple[list[str], str, str]:
    """(argv of one run, reset script, mount prefix) of an approach."""
    if name == "lamina":
        return [*LAMINA, "apply", "-i", INVENTORY, str(lamina_spec(n, work))], LAMINA_RESET, "/var/lib/lamina/"
    argv = baselines.prepare(name, work / name, n, lab.hosts())
    return argv, baselines.reset(name, n), baselines.root(name) + "/"


APPROACHES = ("lamina", "floor", "pyinfra", "ansible")


def bench_specs(sizes: Sequence[int], runs: int, work: Path, approaches: Sequence[str] = APPROACHES) -> list[dict]:
    rows = []
    for n in sizes:
        # lamina and the floor keep their hosts' states side by side and take their no-op runs
        # in turns, in the same minutes: this VM's speed drifts by a third over minutes, which
        # no ratio of runs taken apart survives. The others run alone, as they always did.
        paired = [a for a in approaches if a in ("lamina", "floor")]
        groups = [paired] * bool(paired) + [[a] for a in approaches if a not in paired]
        for group in groups:
            # pyinfra and Ansible take minutes a run from N=50 on (Ansible: ~3 min at N=50): one run there
            tries = runs if group == paired or n <= 10 else 1
            setups = {name: approach_argv(name, n, work / f"n{n}") for name in group}
            firsts: dict[str, list[float]] = {name: [] for name in group}
            for name, (argv, reset, prefix) in setups.items():
                for _ in range(tries):
                    on_hosts(reset)
                    firsts[name].append(timed(argv))
                if count_mounts(prefix) != 3 * n:
                    raise SystemExit(f"bench: {name} N={n}: {count_mounts(prefix)} mounts, want {3 * n}")
            # a no-op run is cheap: 11 at least, for medians that hold still
            noops, commands = _noops({name: setups[name][0] for name in group},
                                     max(tries, 11) if group == paired else tries)
            for name in group:
                on_hosts(setups[name][1])
                row = {"n": n, "approach": name, "runs": tries, "noop_runs": len(noops[name]),
                       "measured": time.strftime("%Y-%m-%d %H:%M"),
                       "first_s": round(statistics.median(firsts[name]), 3),
                       "noop_s": round(statistics.median(noops[name]), 3), "noop_commands_per_host": commands[name]}
                rows.append(row)
                log(f"N={n:<4} {name:<8} first {row['first_s']:7.2f}s   no-op {row['noop_s']:6.2f}s"
                    f"   {commands[name]:g} remote commands/host   (runs: {_runs(firsts[name])}; {_runs(noops[name])})")
    return rows


def _noops(argvs: dict[str, list[str]], runs: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Each approach's no-op runs, taken in turns (ABBA: neither always goes first), and the
    most remote commands (sshd session requests) one run made on one host."""
    noops: dict[str, list[float]] = {name: [] for name in argvs}
    commands: dict[str, float] = dict.fromkeys(argvs, 0)
    for i in range(runs):
        for name in list(argvs) if i % 2 == 0 else list(argvs)[::-1]:
            marks = {h.name: lab.mark(h.name) for h in lab.hosts()}
            noops[name].append(timed(argvs[name]))
            commands[name] = max(commands[name], *(len(lab.exec_requests(h, m)) for h, m in marks.items()))
    return noops, commands


# --- layer shipping --------------------------------------------------------------------------


def bench_ship(work: Path, runs: int, files: int = 5000, total_mib: int = 200) -> dict:
    tree = work / "files" / "big"
    tree.mkdir(parents=True, exist_ok=True)
    size = (total_mib << 20) // files
    for i in range(files):
        (tree / f"d{i % 50}").mkdir(exist_ok=True)
        (tree / f"d{i % 50}" / f"f{i}").write_bytes(os.urandom(size))
    spec = work / "big.yml"
    spec.write_text("images:\n  big:\n    steps:\n      - copy: {src: big, dest: /data}\n"
                    "containers:\n  big: {image: big}\n")
    timed([*LAMINA, "validate", str(spec)])  # builds the layer into the controller's cache, as any apply would
    hosts = [h.name for h in lab.hosts()]
    raw_cmd = f"tar -C {shlex.quote(str(tree))} -cf - . | {{}}"

    def raw() -> float:
        on_hosts("rm -rf /srv/rawship && mkdir -p /srv/rawship")
        start = time.monotonic()
        untar = ["tar", "-xf", "-", "-C", "/srv/rawship"]
        procs = [subprocess.Popen(raw_cmd.format(shlex.join(lab.ssh_argv(h, [shlex.join(untar)]))), shell=True)
                 for h in hosts]
        if any(p.wait() for p in procs):
            raise SystemExit("bench: tar | ssh failed")
        return time.monotonic() - start

    raws, ships, reruns = [], [], []
    for _ in range(runs):
        raws.append(raw())
        on_hosts(LAMINA_RESET)
        ships.append(timed([*LAMINA, "apply", "-i", INVENTORY, str(spec)]))
        reruns.append(timed([*LAMINA, "apply", "-i", INVENTORY, str(spec)]))
    on_hosts(LAMINA_RESET)
    row = {"layer_mib": total_mib, "files": files, "hosts": len(hosts),
           "lamina_s": round(statistics.median(ships), 3), "tar_ssh_s": round(statistics.median(raws), 3),
           "rerun_s": round(statistics.median(reruns), 3)}
    log(f"ship {total_mib} MiB x {len(hosts)} hosts: lamina {row['lamina_s']:.2f}s, tar|ssh {row['tar_ssh_s']:.2f}s,"
        f" re-run {row['rerun_s']:.2f}s")
    return row


# --- deep stacks -----------------------------------------------------------------------------


def bench_deep(work: Path, depths: Sequence[int], runs: int) -> list[dict]:
    rows = []
    host = lab.hosts()[0].name
    for n in depths:
        d = work / f"deep{n}"
        for i in range(n):
            (d / "files" / f"l{i}").mkdir(parents=True, exist_ok=True)
            (d / "files" / f"l{i}" / "top").write_text(f"layer {i}\n")
        steps = "\n".join(f"      - copy: {{src: l{i}, dest: /}}" for i in range(n))
        spec = d / "deep.yml"
        spec.write_text(f"images:\n  deep:\n    steps:\n{steps}\ncontainers:\n  deep: {{image: deep}}\n")
        apply = [*LAMINA, "apply", "-i", INVENTORY, str(spec), "--limit", host]
        on_hosts(LAMINA_RESET, [host])
        first = timed(apply)
        merged = "/var/lib/lamina/containers/deep/merged"
        # the bare mount, as lamina makes it (short links, from the l/ dir), read back from mountinfo
        opts = subprocess.run(lab.ssh_argv(host, [f"findmnt -n -o OPTIONS {merged}"]),
                              capture_output=True, text=True).stdout.strip()
        keep = ",".join(o for o in opts.split(",") if o.split("=")[0] in ("lowerdir", "upperdir", "workdir")
                        or o.startswith("lowerdir+"))
        bare = f"cd /var/lib/lamina/l && mount -t overlay overlay -o {shlex.quote(keep)} {merged}"
        lam, raw = [], []
        for _ in range(runs):
            on_hosts(f"umount {merged}", [host])
            lam.append(timed(apply))
            on_hosts(f"umount {merged}", [host])
            start = time.monotonic()
            on_hosts(bare, [host])
            raw.append(time.monotonic() - start)
        on_hosts(LAMINA_RESET, [host])
        row = {"layers": n, "first_s": round(first, 3), "remount_s": round(statistics.median(lam), 3),
               "bare_mount_s": round(statistics.median(raw), 3)}
        rows.append(row)
        log(f"deep {n} layers: first {first:.2f}s, lamina remount {row['remount_s']:.2f}s,"
            f" bare mount over ssh {row['bare_mount_s']:.2f}s")
    return rows


# --- fan-out ---------------------------------------------------------------------------------

DEMO_PREP = ("for i in 1 2 3; do mkdir -p /srv/demo/low$i; echo \"from low$i\" > /srv/demo/low$i/layer.txt; done;"
             " echo only-low1 > /srv/demo/low1/f1.txt")


def machine_cpu() -> float:
    """CPU seconds the whole machine has spent busy: the test hosts are namespaces on this
    machine, so their work (sshd, tar, mount) shares its cores with the controller."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    busy = sum(int(x) for i, x in enumerate(fields[:8]) if i not in (3, 4))  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def bench_fanout(many: int, runs: int, work: Path) -> dict:
    """lamina's first converge of the demo on 1 host and on all, and the demo floor's
    (baselines/demo_floor.py), taken in turns: the floor's ratio is what this machine allows."""
    from baselines import demo_floor

    from lamina.rootfs import busybox_rootfs

    rootfs = REPO / "roles" / "demo" / "files" / "rootfs.tar"
    if not rootfs.exists():
        busybox_rootfs(rootfs)
    lab.down()
    lab.up(many)
    write_inventory(work)
    names = [h.name for h in lab.hosts()]
    floor = demo_floor.prepare(work / "demo-floor", REPO, str(lab.ssh_config()))
    argvs = {("lamina", 1): [*LAMINA, "apply", "-i", INVENTORY, "--limit", names[0]],
             ("lamina", many): [*LAMINA, "apply", "-i", INVENTORY],
             ("floor", 1): [*floor, names[0]], ("floor", many): [*floor, *names]}
    wall = {k: [] for k in argvs}
    cpu = {k: [] for k in argvs}
    controller = []
    for _ in range(runs):
        for (name, hosts), argv in argvs.items():
            on_hosts(LAMINA_RESET + DEMO_PREP)
            before, mine = machine_cpu(), children_cpu()
            wall[name, hosts].append(timed(argv))
            cpu[name, hosts].append(machine_cpu() - before)
            if (name, hosts) == ("lamina", many):
                controller.append(children_cpu() - mine)
        left = count_mounts("(/srv/fl/|/srv/demo/|/mnt/fl-)")  # an awk regex: one round trip for the three
        if left != demo_floor.MOUNTS:
            raise SystemExit(f"bench: the demo floor left {left} mounts, want {demo_floor.MOUNTS}")
    med = {k: round(statistics.median(v), 3) for k, v in wall.items()}
    row = {"hosts": many, "one_host_s": med["lamina", 1], "all_hosts_s": med["lamina", many],
           "all_hosts_cpu_s": round(statistics.median(cpu["lamina", many]), 3),
           "controller_cpu_s": round(statistics.median(controller), 3), "cpus": os.cpu_count(),
           "floor_one_host_s": med["floor", 1], "floor_all_hosts_s": med["floor", many],
           "floor_all_hosts_cpu_s": round(statistics.median(cpu["floor", many]), 3)}
    log(f"fan-out demo: lamina 1 host {row['one_host_s']:.2f}s, {many} hosts {row['all_hosts_s']:.2f}s"
        f" using {row['all_hosts_cpu_s']:.2f} CPU-s of the machine, {row['controller_cpu_s']:.2f} of them lamina's"
        f" and its ssh clients'; floor 1 host {row['floor_one_host_s']:.2f}s, {many} hosts"
        f" {row['floor_all_hosts_s']:.2f}s using {row['floor_all_hosts_cpu_s']:.2f} CPU-s"
        f" (runs: {'; '.join(f'{n} {h}: {_runs(v)}' for (n, h), v in wall.items())})")
    return row


def children_cpu() -> float:
    """CPU seconds of this process's finished children: lamina and the ssh clients it ran."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _runs(values: Sequence[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


# --- report ----------------------------------------------------------------------------------


REPORTED = "none (reported)"


def ratios(results: dict) -> list[tuple[str, float, str, bool]]:
    """(what, measured ratio, target, met) for each target of the performance issue."""
    by = {(r["n"], r["approach"]): r for r in results["specs"]}
    out = []
    for n in sorted({r["n"] for r in results["specs"]}):
        lam, floor = by[(n, "lamina")], by[(n, "floor")]
        out.append((f"N={n} no-op: remote commands per host", lam["noop_commands_per_host"], "<= 2",
                    lam["noop_commands_per_host"] <= 2))
        r = lam["noop_s"] / floor["noop_s"]
        out.append((f"N={n} no-op: lamina / floor", r, "<= 1.5", r <= 1.5))
        for other in ("pyinfra", "ansible"):
            if n == 50:
                r = by[(n, other)]["noop_s"] / lam["noop_s"]
                out.append((f"N=50 no-op: {other} / lamina", r, ">= 10", r >= 10))
                r = by[(n, other)]["first_s"] / lam["first_s"]
                out.append((f"N=50 first converge: {other} / lamina", r, ">= 3", r >= 3))
    if "ship" in results:
        s = results["ship"]
        r = s["lamina_s"] / s["tar_ssh_s"]
        out.append(("layer shipping: lamina / tar|ssh", r, "<= 1.25", r <= 1.25))
        if (10, "lamina") in by:
            r = s["rerun_s"] / by[(10, "lamina")]["noop_s"]
            out.append(("re-run with the layer present / no-op (N=10)", r, "<= 1.5", r <= 1.5))
    if "fanout" in results:
        f = results["fanout"]
        r = f["all_hosts_s"] / f["one_host_s"]
        out.append((f"fan-out: {f['hosts']} hosts / 1 host", r, "<= 3", r <= 3))
        if "all_hosts_cpu_s" in f:  # the least time that CPU work takes on this machine's cores
            r = f["all_hosts_s"] / (f["all_hosts_cpu_s"] / f["cpus"])
            out.append((f"fan-out: {f['hosts']} hosts, wall time / (machine CPU-s ÷ {f['cpus']} cores)", r, REPORTED,
                        True))
        if "controller_cpu_s" in f:  # the rest is the test hosts' own work, on this machine's cores too
            out.append((f"fan-out: {f['hosts']} hosts, share of the machine's CPU-s spent by lamina and ssh",
                        f["controller_cpu_s"] / f["all_hosts_cpu_s"], REPORTED, True))
        if "floor_all_hosts_s" in f:  # what this machine allows: the hosts share its cores
            out.append((f"fan-out floor (one sh script per host): {f['hosts']} hosts / 1 host",
                        f["floor_all_hosts_s"] / f["floor_one_host_s"], REPORTED, True))
            out.append((f"fan-out: {f['hosts']} hosts, lamina / floor", f["all_hosts_s"] / f["floor_all_hosts_s"],
                        REPORTED, True))
    for d in results.get("deep", []):
        out.append((f"deep stack {d['layers']} layers: lamina remount / bare mount", d["remount_s"] / d["bare_mount_s"],
                    REPORTED, True))
    return out


def markdown(results: dict) -> str:
    lines = ["# lamina benchmarks", "",
             f"Generated by `./scripts/bench.sh` on {results['date']} ({results['machine']}). "
             "Each figure is the median of its runs; a full run measures every baseline in the same run, and a"
             " partial re-run (`--only`, `--approaches`) replaces only its own rows (each row says when)."
             " lamina's and the floor's no-op runs are taken in turns, with both states on the hosts.",
             "Test hosts: network + mount namespaces on this machine, each with its own sshd (see DESIGN §7);"
             " lamina reads them from an inventory file of static host data, as a user's inventory is.",
             "", "## Targets", "", "| what | measured | target | met |", "|---|---:|---|---|"]
    for w, v, t, ok in ratios(results):
        met = "-" if t == REPORTED else "yes" if ok else "**no**"
        lines.append(f"| {w.replace('|', chr(92) + '|')} | {v:.2f} | {t} | {met} |")
    lines += ["", "## Specs of N containers (each with a volume and a bind mount), 3 hosts", "",
              "| N | approach | first converge (s) | no-op (s) | remote commands per host (no-op)"
              " | runs (first / no-op) | measured |",
              "|---:|---|---:|---:|---:|---:|---|"]
    lines += [f"| {r['n']} | {r['approach']} | {r['first_s']:.2f} | {r['noop_s']:.2f} |"
              f" {r['noop_commands_per_host']:g} | {r.get('runs', '')} / {r.get('noop_runs', r.get('runs', ''))}"
              f" | {r.get('measured', '')} |"
              for r in results["specs"]]
    if "ship" in results:
        s = results["ship"]
        lines += ["", f"## Layer shipping: {s['layer_mib']} MiB in {s['files']} files to {s['hosts']} hosts", "",
                  "| lamina first apply (s) | tar c \\| ssh tar x, in parallel (s) | lamina re-run (s) |",
                  "|---:|---:|---:|", f"| {s['lamina_s']:.2f} | {s['tar_ssh_s']:.2f} | {s['rerun_s']:.2f} |"]
    if results.get("deep"):
        lines += ["", "## Deep stacks, one host", "",
                  "| layers | first converge (s) | lamina remount after umount (s) | bare mount over ssh (s) |",
                  "|---:|---:|---:|---:|"]
        lines += [f"| {d['layers']} | {d['first_s']:.2f} | {d['remount_s']:.2f} | {d['bare_mount_s']:.2f} |"
                  for d in results["deep"]]
    if "fanout" in results:
        f = results["fanout"]
        nan = float("nan")
        lines += ["", "## Fan-out: first converge of the demo", "",
                  f"| approach | 1 host (s) | {f['hosts']} hosts (s) | machine CPU-s during the {f['hosts']}-host run"
                  " | of which lamina and its ssh clients |", "|---|---:|---:|---:|---:|",
                  f"| lamina | {f['one_host_s']:.2f} | {f['all_hosts_s']:.2f} | {f.get('all_hosts_cpu_s', nan):.2f}"
                  f" | {f.get('controller_cpu_s', nan):.2f} |"]
        if "floor_all_hosts_s" in f:
            lines.append(f"| floor | {f['floor_one_host_s']:.2f} | {f['floor_all_hosts_s']:.2f}"
                         f" | {f['floor_all_hosts_cpu_s']:.2f} | - |")
            lines += ["", f"The test hosts are namespaces on this machine's {f['cpus']} cores: their own work (sshd,"
                      " tar, mount, the build step) does not run in parallel as real hosts' would. The floor's"
                      f" {f['hosts']}-hosts / 1-host ratio ({f['floor_all_hosts_s'] / f['floor_one_host_s']:.2f})"
                      " is what this machine allows any tool."]
    lines += ["", "![time against spec size](bench/results.png)", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes and one run each (a smoke test, ~3 min)")
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], help="N values (default 10,50,200)")
    p.add_argument("--runs", type=int, help="runs per figure (default 3)")
    p.add_argument("--only", choices=("specs", "ship", "deep", "fanout"), action="append", help="only these parts")
    p.add_argument("--approaches", type=lambda s: s.split(","), default=list(APPROACHES),
                   help="for the specs part (default lamina,floor,pyinfra,ansible); re-measured rows replace old ones")
    args = p.parse_args(argv)
    sizes = args.sizes or ([10] if args.quick else [10, 50, 200])
    runs = args.runs or (1 if args.quick else 3)
    parts = args.only or ["specs", "ship", "deep", "fanout"]
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (the test hosts are network namespaces)")
    baselines.install()
    saved = HERE / "results.json"
    results: dict = json.loads(saved.read_text()) if args.only and saved.exists() else {}  # --only updates parts
    results.update({"date": time.strftime("%Y-%m-%d %H:%M"), "runs": runs,
                    "machine": f"{platform.node()}, {os.cpu_count()} CPUs, Linux {platform.release()}"})
    lab.up(3)
    try:
        with tempfile.TemporaryDirectory(prefix="lamina-bench-") as tmp:
            work = Path(tmp)
            write_inventory(work)
            if "specs" in parts:
                rows = bench_specs(sizes, runs, work, args.approaches)
                fresh = {(r["n"], r["approach"]) for r in rows}
                kept = [r for r in results.get("specs", []) if (r["n"], r["approach"]) not in fresh]
                order = {a: i for i, a in enumerate(APPROACHES)}
                results["specs"] = sorted(kept + rows, key=lambda r: (r["n"], order.get(r["approach"], 9)))
            if "ship" in parts:
                results["ship"] = bench_ship(work / "ship", runs, *((500, 20) if args.quick else ()))
            if "deep" in parts:
                results["deep"] = bench_deep(work, [128] if args.quick else [128, 500], runs)
            if "fanout" in parts:
                results["fanout"] = bench_fanout(5 if args.quick else 20, runs, work)
    finally:
        lab.down()
    saved.write_text(json.dumps(results, indent=2) + "\n")
    if "specs" in results:
        (REPO / "BENCHMARKS.md").write_text(markdown(results))
        subprocess.run([str(baselines.BENCH_VENV / "bin" / "python"), str(HERE / "plot.py"), str(HERE / "results.json"),
                        str(HERE / "results.png")], check=True)
    print("\n".join(f"{'ok  ' if ok else 'MISS'} {w}: {v:.2f} (target: {t})" for w, v, t, ok in ratios(results)))
    return 0 if all(ok for *_, ok in ratios(results)) else 3  # 3: measured, but a target was missed


if __name__ == "__main__":
    sys.exit(main())
