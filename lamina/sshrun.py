"""One shell script per host over the system's OpenSSH client, every host in parallel.

This is lamina's fast read: a no-op run is one `ssh HOST sh -s` per host with the fact
script on stdin (no argument-length limit, whatever the spec's size), and no pyinfra
import or connect. The options mirror what pyinfra's SSH connector does with the same
inventory data; host keys are checked as pyinfra checks them (default accept-new) and
never silently trusted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

CONNECT_TIMEOUT = 10  # pyinfra's default

# Host data that `argv` maps onto OpenSSH options; any other ssh_* or _* key means "let
# pyinfra connect" (passwords, paramiko kwargs, su/doas, sudo users...).
SSH_KEYS = frozenset({"ssh_hostname", "ssh_port", "ssh_user", "ssh_key", "ssh_known_hosts_file",
                      "ssh_strict_host_key_checking", "ssh_config_file"})


@dataclass(frozen=True)
class Outcome:
    ok: bool
    stdout: str
    stderr: str


def available() -> bool:
    return shutil.which("ssh") is not None


STRICT = frozenset({"yes", "no", "off", "ask", "accept-new"})  # what OpenSSH takes and pyinfra passes on


def supports(data: Mapping[str, Any]) -> bool:
    """Whether OpenSSH with `argv`'s options connects as pyinfra would with this host data."""
    if data.get("ssh_strict_host_key_checking", "accept-new") not in STRICT:
        return False  # e.g. a bool: let pyinfra judge it (OpenSSH would read False as "off")
    return not any((k.startswith("ssh_") and k not in SSH_KEYS) or k.startswith("_") for k in data)


def argv(name: str, data: Mapping[str, Any], sudo: bool, remote: str | None = None,
         extra: tuple[str, ...] = ()) -> list[str] | None:
    """`ssh ... HOST REMOTE` (default: a script on stdin) for one inventory host, from its
    data as pyinfra reads it; None when only pyinfra's connector can honour that data."""
    if not supports(data):
        return None
    cmd = ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT}",
           "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3",
           "-o", f"StrictHostKeyChecking={data.get('ssh_strict_host_key_checking', 'accept-new')}", *extra]
    for key, flag in (("ssh_config_file", "-F"), ("ssh_port", "-p"), ("ssh_user", "-l"), ("ssh_key", "-i")):
        if data.get(key) is not None:
            cmd += [flag, str(data[key])]
    if data.get("ssh_known_hosts_file"):
        cmd += ["-o", f"UserKnownHostsFile={data['ssh_known_hosts_file']}"]
    if remote is None:
        remote = "sudo -H -n sh -s" if sudo else "sh -s"  # the script comes on stdin
    return [*cmd, "--", str(data.get("ssh_hostname") or name), *([remote] if remote else [])]


_LIVE: dict[str, tuple[str, ...]] = {}  # host name -> options that reuse its open connection


def reuse(name: str) -> tuple[str, ...]:
    """ssh options that run a command on the host's open connection, if there is one."""
    return _LIVE.get(name, ())


class Connections:
    """One authenticated OpenSSH connection per host, opened at once and used later.

    The connections are made while the controller is still planning (that hides the SSH
    handshake behind the CPU work); they run nothing until `run_all`, so a spec found bad
    meanwhile has touched no host: closing them leaves only an sshd log line."""

    def __init__(self, hosts: Mapping[str, Mapping[str, Any]], sudo: bool):
        self.dir = tempfile.mkdtemp(prefix="lamina-ssh-")  # 0700: the control sockets are ours alone
        self.hosts, self.sudo = dict(hosts), sudo
        self.masters = {}
        self.index = {name: n for n, name in enumerate(self.hosts)}  # control socket of each
        for n, (name, data) in enumerate(self.hosts.items()):
            master = argv(name, data, sudo, remote="", extra=self._control(n, "yes") + ("-N",))
            self.masters[name] = subprocess.Popen(master, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.DEVNULL)
            _LIVE[name] = self._control(n, "no")

    @classmethod
    def for_inventory(cls, inventory_path: str, limit, sudo: bool) -> Connections | None:
        """Connections to the inventory's (selected) hosts, when the fast read can serve it."""
        from . import inventory

        try:
            found = inventory.read(inventory_path) if available() else None
        except Exception:
            return None  # the full path reads it again and reports the problem
        hosts = {h.name: h.data for h in found or () if not limit or h.name in limit}
        return cls(hosts, sudo) if hosts else None

    def _control(self, n: int, master: str) -> tuple[str, ...]:
        return ("-o", f"ControlPath={self.dir}/{n}", "-o", f"ControlMaster={master}", "-o", "ControlPersist=no")

    def _ready(self, name: str, n: int) -> None:
        """Wait until the host's connection is up (or failed: then ssh connects afresh and says why)."""
        deadline = time.monotonic() + CONNECT_TIMEOUT + 2
        sock = os.path.join(self.dir, str(n))
        while not os.path.exists(sock) and self.masters[name].poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)

    def argv(self, name: str, remote: str | None = None) -> list[str]:
        """`ssh` on the host's open connection: REMOTE, or (default) a script on stdin."""
        n = self.index[name]
        self._ready(name, n)
        return argv(name, self.hosts[name], self.sudo, remote=remote, extra=self._control(n, "no"))

    def run(self, name: str, script: str, timeout: float = 600) -> Outcome:
        """Run a script through `sh -s` (under sudo when asked) on the host's connection."""
        command = self.argv(name)
        if self.masters[name].poll() is not None:  # it could not connect: don't wait a timeout again
            return Outcome(False, "", "no connection")
        try:
            done = subprocess.run(command, input=script, capture_output=True, text=True, timeout=timeout,
                                  errors="surrogateescape")  # mount points need not be UTF-8
        except (OSError, subprocess.TimeoutExpired) as e:
            return Outcome(False, "", str(e))
        return Outcome(done.returncode == 0, done.stdout, done.stderr)

    def run_all(self, scripts: Mapping[str, str], timeout: float = 600) -> dict[str, Outcome]:
        """Run each host's script on its connection, every host at once."""
        return self.each(lambda name: self.run(name, scripts[name], timeout), scripts)

    @staticmethod
    def each(work, names):
        """work(name) for every name, all at once (threads: the work is waiting on ssh)."""
        names = list(names)
        if not names:
            return {}
        with ThreadPoolExecutor(min(len(names), 32)) as pool:
            return dict(zip(names, pool.map(work, names), strict=True))

    def close(self) -> None:
        for name in self.masters:
            _LIVE.pop(name, None)
        for master in self.masters.values():
            master.terminate()
        for master in self.masters.values():
            try:
                master.wait(timeout=5)
            except subprocess.TimeoutExpired:
                master.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Connections:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
