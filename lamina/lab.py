"""Test hosts on this machine: ``lamina lab up [-n N | --hosts bookworm:2,trixie:1] [--init sshd|systemd]
[--disks tmpfs|persistent] | down | reboot HOST | status | ssh HOST [CMD...]``.

``--hosts`` (default ``$LAMINA_LAB_HOSTS``) gives each host a Debian userland: the machine's own
suite uses its root, any other a minbase tree made once with debootstrap in /var/cache/lamina-lab.
Every host has the users lamina (sudo without a password), lampw (sudo with the password in
``$LAMINA_LAB_DIR/sudo_password``) and nosudo besides root; ``LAMINA_LAB_USER`` makes
``inventories/lab.py`` log in as one of them.

Each lab host is a set of Linux namespaces with its own IP, copy-on-write root and sshd (see
``labhosts.sh`` beside this file, which does the real work as root). This module wraps it for the
CLI, for ``inventories/lab.py`` and for the integration tests.

``--init systemd`` makes systemd PID 1 of each host: it boots ``multi-user.target`` (units that
lamina installs in /etc/systemd/system with ``WantedBy=multi-user.target`` start at boot), and
starts the lab's sshd as a runtime unit. Such a lab has persistent disks by default: each host's
root (its overlay upper: /etc and everything else written to /), /srv, /mnt, /var/lib/lamina and
/root are directories on the machine's disk (``LAMINA_LAB_DISKS_DIR``, default
/var/lib/lamina-lab/<lab dir>/NAME), so ``reboot HOST`` (kill the host, boot it again with the same
name, address, host key and disks) keeps them, while /run, /tmp and the mounts made inside are
lost, as on a real machine. ``--init sshd`` labs keep tmpfs disks by default (faster I/O: the test
suite's shared lab); ``--disks`` chooses either way (an sshd host with persistent disks runs its own
/etc/rc.local at boot, before sshd, like a SysV host). ``down`` removes the disks.

The lab is chosen by environment variables, so that a user's demo lab and the test suite's lab
coexist: ``LAMINA_LAB_DIR`` (default ``/run/lamina/lab``), ``LAMINA_LAB_PREFIX`` (default ``lab``),
``LAMINA_LAB_NET`` (default ``10.203.0``). They are read on every call, never cached.
``LAMINA_LAB_INIT`` / ``LAMINA_LAB_DISKS`` are the defaults of ``up``'s ``init`` / ``disks``.

Importing this module is cheap (standard library only): the inventory imports it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

from lamina.errors import LaminaError

DEFAULT_DIR = "/run/lamina/lab"
HARNESS = Path(__file__).with_name("labhosts.sh")

# One line per session request, logged by each host's sshd at LogLevel VERBOSE (OpenSSH 9.2
# session.c do_exec): "Starting session: command for root from 10.203.0.1 port 4711 id 0".
# The kind is "command", "command on pts/N", "subsystem 'sftp'", "shell", "forced-command".
# OpenSSH logs no command text at any LogLevel.
_SESSION = r"^Starting session: (.+?) for \S+ from "


class LabError(LaminaError):
    """A problem the user can fix; the CLI prints it as one line."""


# pid: the host's PID 1 as seen from the machine (nsenter -t PID -a); lower: its root's lower
# dir, "/" (the machine's own userland) or a debootstrap'ed tree. A namedtuple: the lab
# inventory imports this module on every run, and dataclasses cost ~10 ms to import.
LabHost = namedtuple("LabHost", "name address pid lower", defaults=(None, "/"))


def lab_dir() -> Path:
    return Path(os.environ.get("LAMINA_LAB_DIR") or DEFAULT_DIR)


def ssh_config() -> Path:
    return lab_dir() / "ssh_config"


def known_hosts() -> Path:
    return lab_dir() / "known_hosts"


def identity() -> Path:
    return lab_dir() / "id_ed25519"


def sudo_password() -> str:
    """The password of the hosts' user lampw (USERS["sudo_password"])."""
    return (lab_dir() / "sudo_password").read_text().strip()


def hosts() -> list[LabHost]:
    """The hosts the last ``up`` started (empty when the lab is down)."""
    try:
        state = json.loads((lab_dir() / "hosts.json").read_text())
    except FileNotFoundError:
        return []
    return [LabHost(h["name"], h["address"], h.get("pid"), h.get("lower", "/")) for h in state["hosts"]]


def info() -> dict:
    """The running lab's settings: prefix, net, init ("sshd"/"systemd"), disks ("tmpfs"/
    "persistent"), disks_dir (the machine-side dir holding one dir per host; "" with tmpfs);
    empty when the lab is down."""
    try:
        state = json.loads((lab_dir() / "hosts.json").read_text())
    except FileNotFoundError:
        return {}
    state.pop("hosts", None)
    state.setdefault("init", "sshd")
    state.setdefault("disks", "tmpfs")
    state.setdefault("disks_dir", "")
    return state


def disk_dir(name: str) -> Path | None:
    """Host ``name``'s persistent disk on the machine (``up/`` is its root's upper dir, ``srv/``,
    ``mnt/``, ``lamina/``, ``home/`` are its /srv, /mnt, /var/lib/lamina, /root), None with tmpfs
    disks. Read it only while the host is stopped or for checks: the host owns it."""
    host(name)
    d = info().get("disks_dir")
    return Path(d) / name if d else None


def host(name: str) -> LabHost:
    """The lab host called ``name``; LabError if the lab is down or has no such host."""
    all_hosts = hosts()
    if not all_hosts:
        raise LabError(f"the lab in {lab_dir()} is down: start it with `lamina lab up`")
    for h in all_hosts:
        if h.name == name:
            return h
    names = ", ".join(h.name for h in all_hosts)
    raise LabError(f"no lab host {name!r} (hosts: {names})")


# --- lifecycle -----------------------------------------------------------------------------------


def _check_machine(init: str | None = None) -> None:
    import shutil  # not at the top: the lab inventory imports this module on every run (bz2, lzma)

    if os.geteuid() != 0:
        raise LabError("lamina lab needs root (network namespaces, mounts): run it as root")
    if not (shutil.which("sshd") or os.path.exists("/usr/sbin/sshd")):
        raise LabError("sshd not found: install openssh-server (apt-get install openssh-server)")
    for tool, package in [
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("ip", "iproute2"),
        ("unshare", "util-linux"),
        ("flock", "util-linux"),
        ("nsenter", "util-linux"),
    ]:
        if not (shutil.which(tool) or os.path.exists(f"/usr/sbin/{tool}")):
            raise LabError(f"{tool} not found: install {package}")
    if init == "systemd" and not os.path.exists("/lib/systemd/systemd"):
        raise LabError("--init systemd needs systemd: install systemd (apt-get install systemd)")


def _harness(action: str, *args: str, **env: str) -> None:
    """Run ``labhosts.sh ACTION``: its stdout (progress) goes to ours, its stderr becomes the error.

    Safe to capture: the harness starts hosts with their output sent to their own log files, so
    no host keeps our pipe open.
    """
    _check_machine()
    proc = subprocess.run(
        ["bash", str(HARNESS), action, *args],
        env={**os.environ, "LAMINA_LAB_DIR": str(lab_dir()), **env},
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        msg = lines[-1].removeprefix("lab: ") if lines else f"exit status {proc.returncode}"
        raise LabError(f"lab {action} failed: {msg}")


INITS = ("sshd", "systemd")
DISKS = ("tmpfs", "persistent")
USERLANDS_DIR = Path("/var/cache/lamina-lab")  # debootstrap'ed roots, kept between labs (root-only)
# What a host's userland needs (sshd, mount, ip, sudo for the non-root users) and no more: no
# python3, no openssl (lamina's host commands must work without them).
USERLAND_PACKAGES = "openssh-server,openssh-sftp-server,util-linux,iproute2,sudo"
# Login users of every host besides root, all with the lab's key: sudo without a password,
# sudo with the lab's password ($LAMINA_LAB_DIR/sudo_password), and no sudo rights at all.
USERS = {"sudo": "lamina", "sudo_password": "lampw", "no_sudo": "nosudo"}


def machine_suite() -> str:
    """This machine's Debian suite (VERSION_CODENAME), e.g. bookworm: hosts of that userland
    use the machine's own root as their lower dir."""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""


def fleet(text: str) -> list[str]:
    """"bookworm:2,trixie:1" → one userland (a Debian suite) per host, in order."""
    import re

    out = []
    for part in text.split(","):
        suite, _, count = part.strip().partition(":")
        if not re.fullmatch(r"[a-z][a-z0-9-]{1,30}", suite) or not re.fullmatch(r"[1-9][0-9]?", count or "1"):
            raise LabError(f"--hosts: {part.strip()!r} is not SUITE[:COUNT] (e.g. bookworm:2,trixie:1)")
        out += [suite] * int(count or "1")
    if not 1 <= len(out) <= 99:
        raise LabError(f"number of hosts must be 1..99, not {len(out)}")
    return out


def userland(suite: str) -> str:
    """The lower dir for hosts of Debian `suite`: "/" for the machine's own, else a minbase
    tree made once with debootstrap (~40 s, ~280 MB) and kept in USERLANDS_DIR."""
    if suite == machine_suite():
        return "/"
    root = USERLANDS_DIR / suite
    if (root / ".lamina-userland").is_file():
        return str(root)
    import shutil

    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not os.path.exists(debootstrap):
        raise LabError(f"a {suite} userland needs debootstrap: apt-get install debootstrap")
    USERLANDS_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = USERLANDS_DIR / f"{suite}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    mirror = os.environ.get("LAMINA_LAB_MIRROR") or "http://deb.debian.org/debian"
    print(f"lab: making a {suite} userland in {root} with debootstrap (once; ~1 min)", file=sys.stderr, flush=True)
    done = subprocess.run([debootstrap, "--variant=minbase", f"--include={USERLAND_PACKAGES}", suite, str(tmp), mirror],
                          capture_output=True, text=True)
    if done.returncode:
        last = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()][-1:] or ["no output"]
        raise LabError(f"debootstrap {suite} failed: {last[0]} (log: {tmp}/debootstrap/debootstrap.log)")
    (tmp / ".lamina-userland").write_text(f"{suite} {mirror}\n")
    tmp.rename(root)
    return str(root)


def up(n: int | None = None, init: str | None = None, disks: str | None = None,
       userlands: list[str] | None = None) -> list[LabHost]:
    """Start (or restart from scratch) a lab of ``n`` hosts; returns them.

    ``init``: "sshd" (sshd is PID 1) or "systemd" (systemd is PID 1, boots multi-user.target);
    default ``$LAMINA_LAB_INIT`` or "sshd". ``disks``: "tmpfs" or "persistent" (on the machine's
    disk, kept by :func:`reboot`); default ``$LAMINA_LAB_DISKS``, else persistent with systemd.
    Fresh disks either way: ``up`` wipes what an earlier lab in this dir left.
    ``userlands``: one Debian suite per host (see :func:`fleet`), default ``$LAMINA_LAB_HOSTS``,
    else ``n`` (default 3) hosts of the machine's own userland.
    """
    if userlands is None:
        env_fleet = os.environ.get("LAMINA_LAB_HOSTS")
        userlands = fleet(env_fleet) if env_fleet and n is None else [machine_suite()] * (n or 3)
    n = len(userlands)
    if not 1 <= n <= 99:
        raise LabError(f"number of hosts must be 1..99, not {n}")
    init = init or os.environ.get("LAMINA_LAB_INIT") or "sshd"
    if init not in INITS:
        raise LabError(f"init must be sshd or systemd, not {init!r}")
    env = {"LAMINA_LAB_N": str(n), "LAMINA_LAB_INIT": init,
           "LAMINA_LAB_LOWERS": " ".join(userland(u) for u in userlands)}
    disks = disks or os.environ.get("LAMINA_LAB_DISKS")
    if disks:
        if disks not in DISKS:
            raise LabError(f"disks must be tmpfs or persistent, not {disks!r}")
        env["LAMINA_LAB_DISKS"] = disks
    _check_machine(init)
    _harness("up", **env)
    return hosts()


def reboot(name: str) -> LabHost:
    """Reboot host ``name`` like pulling the plug: kill its whole process tree (its namespaces
    go, and with them every mount made on it and its /run and /tmp), then boot it again with the
    same name, address, host key (known_hosts still matches) and persistent disks. Returns when
    its sshd answers, and with systemd when ``systemctl is-system-running`` says running or
    degraded (bounded: ``LAMINA_LAB_BOOT_TIMEOUT``, default 60 s). The host's new PID 1 is in
    the result. Needs persistent disks; ssh control masters to the host are ended. No session
    request is made on the host (``exec_requests`` counts are unchanged)."""
    host(name)  # clear error for an unknown host or a downed lab
    settings = info()
    if settings.get("disks") != "persistent":
        raise LabError(
            f"{name} has tmpfs disks, which a reboot would wipe: start the lab with persistent disks "
            "(lamina lab up --disks persistent, or --init systemd)"
        )
    _check_machine(settings.get("init"))
    _harness("reboot", name)
    return host(name)


def down() -> None:
    """Stop every host of the lab and remove its state; fine when already down."""
    _harness("down")


def _sshd_answers(address: str, timeout: float = 1.0) -> bool:
    """True if an SSH server greets on address:22 (no session, so nothing is counted)."""
    try:
        import socket

        with socket.create_connection((address, 22), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def _in_netns(pid: int, netns: str) -> bool:
    """True if process ``pid`` lives and is in network namespace ``netns`` (so is that host's,
    not a recycled PID)."""
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
        mine, want = os.stat(f"/proc/{pid}/ns/net"), os.stat(f"/run/netns/{netns}")
    except (OSError, IndexError):
        return False
    return (mine.st_dev, mine.st_ino) == (want.st_dev, want.st_ino)


def status() -> list[dict]:
    """One dict per host: name, address, pid (None if dead), sshd ("yes"/"no")."""
    all_hosts = hosts()
    # in parallel: a dead host's address times out
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, len(all_hosts))) as pool:
        answers = list(pool.map(_sshd_answers, [h.address for h in all_hosts]))
    return [
        {
            "name": h.name,
            "address": h.address,
            "pid": h.pid if h.pid is not None and _in_netns(h.pid, h.name) else None,
            "sshd": "yes" if ok else "no",
        }
        for h, ok in zip(all_hosts, answers, strict=True)
    ]


def ssh_argv(name: str, command: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The ssh command line for ``name``; ``command`` is run by the host's shell, as with ssh."""
    host(name)  # clear error for an unknown host or a downed lab
    return ["ssh", "-F", str(ssh_config()), name, *command]


def ssh(name: str, argv: list[str] | tuple[str, ...] = ()) -> int:
    """Run ``ssh HOST argv...`` (interactive shell if argv is empty); returns ssh's exit code,
    which is the remote command's, or 255 for an ssh failure."""
    try:
        return subprocess.run(ssh_argv(name, argv)).returncode
    except KeyboardInterrupt:
        return 130


# --- remote-command accounting -------------------------------------------------------------------


def sshd_log(name: str) -> Path:
    return lab_dir() / "hosts" / name / "sshd.log"


def exec_requests(name: str, since: int = 0) -> list[str]:
    """Session requests (exec / subsystem / shell) host ``name``'s sshd has started, in order,
    one entry each, e.g. ``"command"``, ``"subsystem 'sftp'"``, ``"shell"``.

    ``since``: a value from :func:`mark`, to see only the requests made after it.
    """
    try:
        text = sshd_log(name).read_text(errors="replace")
    except FileNotFoundError:
        host(name)  # raises the helpful error
        raise
    import re

    session = re.compile(_SESSION)
    found = [m.group(1) for m in map(session.match, text.splitlines()) if m]
    return found[since:]


def mark(name: str) -> int:
    """How many requests host ``name`` has seen so far; pass it to ``exec_requests(since=)``."""
    return len(exec_requests(name))


# --- CLI -----------------------------------------------------------------------------------------


def _print_up(elapsed: float) -> None:
    hs = hosts()
    env = "" if lab_dir() == Path(DEFAULT_DIR) else f"LAMINA_LAB_DIR={lab_dir()} "
    names = ", ".join(f"{h.name} ({h.address})" for h in hs)
    print(f"lab up: {len(hs)} hosts in {elapsed:.1f} s: {names}")
    print(f"  pyinfra inventory: {env}pyinfra inventories/lab.py exec -- hostname")
    print(f"  ssh config:        ssh -F {ssh_config()} {hs[0].name}")
    print(f"  shell on a host:   {env}lamina lab ssh {hs[0].name}")
    print(f"  stop it:           {env}lamina lab down")


def _cmd_up(args) -> int:
    init = args.init or os.environ.get("LAMINA_LAB_INIT") or "sshd"
    _check_machine(init)  # before printing progress
    t0 = time.monotonic()
    with_init = "" if init == "sshd" else f" (init: {init})"
    if args.hosts and args.n:
        raise LabError("give -n or --hosts, not both")
    fleet_text = args.hosts or (None if args.n else os.environ.get("LAMINA_LAB_HOSTS"))
    userlands = fleet(fleet_text) if fleet_text else [machine_suite()] * (args.n or 3)
    mix = ", ".join(f"{userlands.count(u)} {u}" for u in dict.fromkeys(userlands))
    print(f"lab up: starting {len(userlands)} hosts ({mix}) in {lab_dir()}{with_init}", flush=True)
    up(init=init, disks=args.disks, userlands=userlands)
    _print_up(time.monotonic() - t0)
    return 0


def _cmd_reboot(args) -> int:
    t0 = time.monotonic()  # on failure: only the error line (no progress printed before it)
    h = reboot(args.host)
    print(f"lab reboot: {h.name} ({h.address}) back in {time.monotonic() - t0:.1f} s")
    return 0


def _cmd_down(args) -> int:
    down()
    print(f"lab down: {lab_dir()}")
    return 0


def _cmd_status(args) -> int:
    rows = status()
    if not rows and lab_dir().exists():
        print(
            f"lab not running: a failed `up` left {lab_dir()} (logs: hosts/*/sshd.log); "
            "`lamina lab down` cleans up"
        )
        return 1
    if not rows:
        print(f"lab down ({lab_dir()}): no hosts; start with `lamina lab up`")
        return 0
    print(f"{'HOST':<10} {'ADDRESS':<15} {'PID':>8}  SSHD")
    for r in rows:
        pid = r["pid"] if r["pid"] is not None else "dead"
        print(f"{r['name']:<10} {r['address']:<15} {pid:>8}  {r['sshd']}")
    return 0 if all(r["sshd"] == "yes" for r in rows) else 1


def _cmd_ssh(args) -> int:
    return ssh(args.host, args.remote_command)


def _guard(fn):
    """Turn LabError into one line on stderr and exit status 1 (no traceback)."""

    def run(args) -> int:
        try:
            return fn(args)
        except LabError as e:
            print(f"lamina lab: error: {e}", file=sys.stderr)
            return 1

    return run


def register(subparsers) -> None:
    """Add ``lab`` with its sub-commands to an argparse sub-parsers object."""
    import argparse  # here, not at the top (nor re): the lab inventory imports this module on every run
    env_help = (
        "environment: LAMINA_LAB_DIR (state dir, default /run/lamina/lab), LAMINA_LAB_PREFIX "
        "(host names, default lab), LAMINA_LAB_NET (default 10.203.0: hosts get .11, .12, ...), "
        "LAMINA_LAB_INIT and LAMINA_LAB_DISKS (defaults of up --init/--disks), LAMINA_LAB_DISKS_DIR "
        "(where persistent disks live, default /var/lib/lamina-lab), LAMINA_LAB_BOOT_TIMEOUT "
        "(seconds systemd may take to boot a host, default 60), LAMINA_LAB_HOSTS (default of up --hosts), "
        "LAMINA_LAB_MIRROR (Debian mirror for debootstrap), LAMINA_LAB_USER (the user inventories/lab.py logs "
        "in as: root, lamina, lampw or nosudo). Needs root and openssh-server."
    )
    lab = subparsers.add_parser(
        "lab",
        help="test hosts on this machine (namespaces + sshd), for trying lamina",
        description="Test hosts on this machine: each has its own network namespace and IP, "
        "mount namespace, copy-on-write root and sshd, reachable over real SSH with "
        "host-key checking. Use them with inventories/lab.py.",
        epilog=env_help,
    )
    lab.set_defaults(func=lambda args: (lab.print_help(), 2)[1])
    sub = lab.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser(
        "up",
        help="start the lab (restarts it from scratch if it is up)",
        description="Start N fresh test hosts; a running lab of the same "
        "LAMINA_LAB_DIR is taken down first.",
        epilog=env_help,
    )
    p.add_argument("-n", type=int, metavar="N", help="number of hosts of this machine's userland (default 3)")
    p.add_argument("--hosts", metavar="SUITE:N,...",
                   help="a mixed fleet: N hosts of each Debian suite, e.g. bookworm:2,trixie:1; the machine's own"
                        " suite uses its root, others a debootstrap'ed minbase tree made once in"
                        f" {USERLANDS_DIR} (default: $LAMINA_LAB_HOSTS, else -n)")
    p.add_argument(
        "--init",
        choices=INITS,
        help="PID 1 of each host: sshd, or systemd booting multi-user.target, which starts sshd "
        "and the units enabled for it (default: $LAMINA_LAB_INIT, else sshd)",
    )
    p.add_argument(
        "--disks",
        choices=DISKS,
        help="where each host's root upper, /srv, /mnt, /var/lib/lamina and /root live: tmpfs "
        "(fast, lost when the host stops) or persistent (directories on the machine's disk, kept "
        "by `lamina lab reboot`); default: $LAMINA_LAB_DISKS, else persistent with systemd, "
        "tmpfs with sshd",
    )
    p.set_defaults(func=_guard(_cmd_up))

    p = sub.add_parser(
        "reboot",
        help="kill a host and boot it again, keeping its persistent disks",
        description="Kill HOST's whole process tree (every mount made on it, its /run and /tmp "
        "go) and boot it again with the same name, address, host key and persistent disks; "
        "returns when its sshd answers (with systemd: when it finished booting). Needs a lab "
        "started with persistent disks.",
        epilog=env_help,
    )
    p.add_argument("host", metavar="HOST", help="host name, e.g. lab1")
    p.set_defaults(func=_guard(_cmd_reboot))

    p = sub.add_parser(
        "down",
        help="stop all hosts and remove the lab's state",
        description="Stop all hosts of the lab and remove its state dir; "
        "fine when the lab is already down.",
        epilog=env_help,
    )
    p.set_defaults(func=_guard(_cmd_down))

    p = sub.add_parser(
        "status",
        help="list hosts, addresses, PIDs and whether sshd answers",
        description="List the lab's hosts; exit status 1 if a host's sshd does not answer.",
        epilog=env_help,
    )
    p.set_defaults(func=_guard(_cmd_status))

    p = sub.add_parser(
        "ssh",
        help="ssh to a lab host (a shell, or run CMD)",
        description="ssh to a lab host as root with the lab's ssh_config. "
        "CMD is run by the host's shell, as with ssh; the exit status is CMD's "
        "(255 if ssh itself failed).",
        epilog=env_help,
    )
    p.add_argument("host", metavar="HOST", help="host name, e.g. lab1")
    p.add_argument(
        "remote_command",  # not "command": lamina.cli uses that dest for the sub-command
        metavar="CMD",
        nargs=argparse.REMAINDER,
        help="command and arguments (default: interactive shell)",
    )
    p.set_defaults(func=_guard(_cmd_ssh))

    p = sub.add_parser(
        "rootfs",
        help="write a tiny busybox root filesystem tar, a base image to try images with",
        description="Write OUT: a small root filesystem tar built from Debian's static busybox "
        "(apt-get install busybox-static), e.g. for `images: {base: {steps: [{add: {src: OUT}}]}}`.",
    )
    p.add_argument("out", metavar="OUT", help="the tar file to write")
    p.set_defaults(func=_guard(_cmd_rootfs))


def _cmd_rootfs(args) -> int:
    from .rootfs import busybox_rootfs

    try:
        print(busybox_rootfs(args.out))
    except (RuntimeError, OSError) as e:
        raise LabError(str(e)) from None
    return 0
