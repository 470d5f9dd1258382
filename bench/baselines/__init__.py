"""Baselines for lamina's benchmark: the same host state made by other means than lamina.

- ``pyinfra``: stock pyinfra operations (``pyinfra_deploy.py``), run by the pyinfra of .venv.
- ``ansible``: a playbook (``playbook.yml``) with builtin modules and ``ansible.posix.mount``, run by
  the Ansible of .venv-bench (``install()``), with SSH pipelining and ControlMaster/ControlPersist.
- ``floor``: one POSIX sh script per host over one ssh connection (``floor_script()``): a single awk
  over /proc/self/mountinfo, then only the missing mkdir/mount; the layer crosses the connection only
  when the host asks for it.

State per host, for i < N, under ROOT = /srv/bl-APPROACH and BIND = /srv/bench/APPROACH: ROOT/layer
(the busybox rootfs tar, shipped and extracted only if missing), ROOT/c{i}/{upper,work,merged}, an
overlay on ROOT/c{i}/merged (lowerdir ROOT/layer), the volume ROOT/vol/v{i}/_data bind-mounted on
ROOT/c{i}/merged/data, BIND/b{i} bind-mounted on ROOT/c{i}/merged/share: 3N mounts.

Standard library only at import (lamina is imported inside prepare()).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

APPROACHES = ("pyinfra", "ansible", "floor")
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LOCK = REPO / "bench" / "requirements-bench.lock"
BENCH_VENV = REPO / ".venv-bench"


def root(approach: str) -> str:
    return f"/srv/bl-{approach}"


def bind_root(approach: str) -> str:
    return f"/srv/bench/{approach}"


def expected_mounts(approach: str, n: int) -> dict[str, tuple[str, str]]:
    """mountpoint -> ("overlay", upperdir) or ("bind", source dir), the 3N mounts of a converged host."""
    r, b = root(approach), bind_root(approach)
    want = {}
    for i in range(n):
        c = f"{r}/c{i}"
        want[f"{c}/merged"] = ("overlay", f"{c}/upper")
        want[f"{c}/merged/data"] = ("bind", f"{r}/vol/v{i}/_data")
        want[f"{c}/merged/share"] = ("bind", f"{b}/b{i}")
    return want


def install() -> None:
    """Create or update .venv-bench from bench/requirements-bench.lock; quiet when up to date."""
    want = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    stamp = BENCH_VENV / ".bench-installed"
    if stamp.exists() and stamp.read_text().strip() == want:
        return
    print(f"bench: installing {BENCH_VENV.name} from {LOCK.relative_to(REPO)}", file=sys.stderr)
    if not (BENCH_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    pip = [str(BENCH_VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run([*pip, "-r", str(LOCK)], capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stdout + done.stderr)
        raise RuntimeError(f"pip install -r {LOCK} failed")
    stamp.write_text(want + "\n")


def prepare(approach: str, workdir: Path, n: int, lab_hosts) -> list[str]:
    """Write this approach's files for N containers and ``lab_hosts`` into ``workdir``; return the argv
    of one run (first converge and no-op re-run are the same command)."""
    from lamina.rootfs import busybox_rootfs

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tar = busybox_rootfs(workdir / "rootfs.tar")
    make = {"pyinfra": _pyinfra, "ansible": _ansible, "floor": _floor}[approach]
    return make(workdir, n, list(lab_hosts), tar)


def reset(approach: str, n: int = 0) -> str:
    """sh script removing the approach's state from a host: every mount under ROOT, last mounted first
    (inner binds before their overlay), then ROOT and BIND. ``n`` is not needed."""
    r, b = root(approach), bind_root(approach)
    return (
        f"awk -v p={r}/ 'index($5, p) == 1 {{ m[k++] = $5 }} END {{ while (k--) print m[k] }}' /proc/self/mountinfo"
        f" | while read -r m; do umount \"$m\"; done\nrm -rf {r} {b}\n"
    )


def _pyinfra(workdir: Path, n: int, hosts, tar: Path) -> list[str]:
    from lamina import lab

    data = {"bl_n": n, "bl_root": root("pyinfra"), "bl_bind": bind_root("pyinfra"), "bl_tar": str(tar)}
    ssh = {"ssh_user": "root", "ssh_key": str(lab.identity()), "ssh_known_hosts_file": str(lab.known_hosts()),
           "ssh_strict_host_key_checking": "yes"}
    group = [(h.name, {"ssh_hostname": h.address, **ssh, **data}) for h in hosts]
    inventory = workdir / "inventory.py"
    inventory.write_text(f"# pyinfra inventory for bench/baselines/pyinfra_deploy.py\nbench = {group!r}\n")
    return [str(REPO / ".venv" / "bin" / "pyinfra"), "-y", str(inventory), str(HERE / "pyinfra_deploy.py")]


# Speed settings an experienced user sets: pipelining (one ssh exec per module run instead of put +
# exec + rm), ControlMaster/ControlPersist (one TCP+SSH handshake per host, not per task), no -C
# (compression only costs CPU on a LAN), no fact gathering, a fixed interpreter (no discovery).
ANSIBLE_CFG = """\
[defaults]
inventory = {workdir}/inventory.yml
interpreter_python = /usr/bin/python3
gathering = explicit
host_key_checking = True
forks = 20
retry_files_enabled = False

[ssh_connection]
pipelining = True
ssh_args = -o ControlMaster=auto -o ControlPersist=60s
"""


def _ansible(workdir: Path, n: int, hosts, tar: Path) -> list[str]:
    from lamina import lab

    ssh_args = (f"-o UserKnownHostsFile={lab.known_hosts()} -o GlobalKnownHostsFile=/dev/null"
                " -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes")
    variables = {"ansible_user": "root", "ansible_ssh_private_key_file": str(lab.identity()),
                 "ansible_ssh_common_args": ssh_args,
                 "bl_n": n, "bl_root": root("ansible"), "bl_bind": bind_root("ansible"), "bl_tar": str(tar)}
    inventory = {"all": {"vars": variables, "hosts": {h.name: {"ansible_host": h.address} for h in hosts}}}
    (workdir / "inventory.yml").write_text(json.dumps(inventory, indent=1) + "\n")  # JSON is YAML
    (workdir / "ansible.cfg").write_text(ANSIBLE_CFG.format(workdir=workdir))
    # A fresh ControlPath dir per run: every run starts cold, as pyinfra's and the floor's do (the
    # masters of the previous run persist 60 s and would otherwise make a quick re-run warm).
    playbook = BENCH_VENV / "bin" / "ansible-playbook"
    return ["sh", "-c", f'ANSIBLE_SSH_CONTROL_PATH_DIR="$(mktemp -d {workdir}/cp.XXXXXX)" '
            f"ANSIBLE_CONFIG={workdir}/ansible.cfg exec {playbook} {HERE / 'playbook.yml'}"]


def floor_script(n: int, approach: str = "floor") -> str:
    """The floor's script for N containers, for ``sh -s``: one awk reads /proc/self/mountinfo and
    prints the commands for what is missing, a converged host answers "ok" right there. Else one
    mkdir -p for all missing dirs, the overlays, one mkdir -p for the mountpoints inside them, the
    bind mounts. A host without the layer says "layer" and reads it (tar.gz) from stdin: the script
    is one { } group, parsed whole before it runs, so the sh has read nothing of the layer itself."""
    r, b = root(approach), bind_root(approach)
    awk = r"""{ m[$5] = 1 }
END {
  for (i = 0; i < N; i++) {
    c = R "/c" i
    if (!((c "/merged") in m)) {
      d = d " " c "/upper " c "/work " c "/merged"
      o = o "mount -t overlay overlay -o lowerdir=" R "/layer,upperdir=" c "/upper,workdir=" c "/work " c "/merged\n"
    }
    if (!((c "/merged/data") in m)) {
      d = d " " R "/vol/v" i "/_data"; e = e " " c "/merged/data"
      s = s "mount --bind " R "/vol/v" i "/_data " c "/merged/data\n"
    }
    if (!((c "/merged/share") in m)) {
      d = d " " B "/b" i; e = e " " c "/merged/share"
      s = s "mount --bind " B "/b" i " " c "/merged/share\n"
    }
  }
  if (d != "") printf "mkdir -p%s\n", d
  printf "%s", o
  if (e != "") printf "mkdir -p%s\n", e
  printf "%s", s
}"""
    return (
        f"# lamina bench floor: N={n}, ROOT={r}\n{{\n"
        f"todo=$(awk -v R={r} -v B={b} -v N={n} '{awk}' /proc/self/mountinfo)\n"
        '[ -n "$todo" ] || { echo ok; exit 0; }\n'
        "set -e\n"
        f"if [ ! -e {r}/layer/bin/busybox ]; then mkdir -p {r}/layer; echo layer; tar -xzf - -C {r}/layer; fi\n"
        'eval "$todo"\n'
        "echo ok\n}\n"
    )


# One ssh per host, in parallel. The host's stdin is a FIFO that gets the script, then the layer
# only if the host asks for it: a no-op run sends the script alone. sh has no pipefail: the host's
# last word "ok" tells success.
FLOOR_RUN = """\
# the floor: one ssh connection per host, in parallel
one() {{
  ssh -F {ssh_config} -o ControlPath=none "$1" sh -s < {d}/fifo.$1 | {{
    cat {d}/floor.sh >&3
    read -r said
    if [ "$said" = layer ]; then cat {d}/layer.tar.gz >&3; exec 3>&-; read -r said; fi
    [ "$said" = ok ]
  }} 3>{d}/fifo.$1
}}
"""


def _floor(workdir: Path, n: int, hosts, tar: Path) -> list[str]:
    from lamina import lab

    (workdir / "floor.sh").write_text(floor_script(n))
    (workdir / "layer.tar.gz").write_bytes(gzip.compress(tar.read_bytes(), 6, mtime=0))
    for h in hosts:
        fifo = workdir / f"fifo.{h.name}"
        if not fifo.is_fifo():
            fifo.unlink(missing_ok=True)
            os.mkfifo(fifo)
    runs = "".join(f"one {h.name} & p{k}=$!\n" for k, h in enumerate(hosts))
    waits = "".join(f"wait $p{k} || rc=1\n" for k in range(len(hosts)))
    run = FLOOR_RUN.format(ssh_config=lab.ssh_config(), d=workdir) + f"{runs}rc=0\n{waits}exit $rc\n"
    (workdir / "run.sh").write_text(run)
    return ["sh", str(workdir / "run.sh")]
