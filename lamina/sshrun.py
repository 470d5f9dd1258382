"""One shell script per host over the system's OpenSSH client, every host in parallel.

This is lamina's fast read: a no-op run is one `ssh HOST sh -s` per host with the fact
script on stdin (no argument-length limit, whatever the spec's size), and no pyinfra
import or connect. The options mirror what pyinfra's SSH connector does with the same
inventory data; host keys are checked as pyinfra checks them (default accept-new) and
never silently trusted.
"""

from __future__ import annotations

import os
import time
from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from . import mux

CONNECT_TIMEOUT = 10  # pyinfra's default

# Host data that `argv` maps onto OpenSSH options; any other ssh_* or _* key means "let
# pyinfra connect" (passwords, paramiko kwargs, su/doas, sudo users...).
SSH_KEYS = frozenset({"ssh_hostname", "ssh_port", "ssh_user", "ssh_key", "ssh_known_hosts_file",
                      "ssh_strict_host_key_checking", "ssh_config_file"})


# Every import here is paid by every run before its first connection: no dataclasses,
# typing or concurrent.futures (~15 ms together), and subprocess, threading, select and re
# only once the connections are on their way (~25 ms; see `_Spawned`).
Outcome = namedtuple("Outcome", "ok stdout stderr")


def available() -> bool:
    return _ssh() is not None


def _ssh(found: list[str | None] = []) -> str | None:  # noqa: B006 - found once per run
    """The ssh client's path, searched once: each exec then skips the PATH walk."""
    if not found:  # shutil.which, without importing shutil (bz2, lzma...) before the first connection
        dirs = os.environ.get("PATH", os.defpath).split(os.pathsep)
        paths = (os.path.join(d or ".", "ssh") for d in dirs)
        found.append(next((p for p in paths if os.access(p, os.X_OK) and not os.path.isdir(p)), None))
    return found[0]


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
    cmd = [_ssh() or "ssh", "-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT}",
           "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3",
           "-o", f"StrictHostKeyChecking={data.get('ssh_strict_host_key_checking', 'accept-new')}", *extra]
    for key, flag in (("ssh_config_file", "-F"), ("ssh_port", "-p"), ("ssh_user", "-l"), ("ssh_key", "-i")):
        if data.get(key) is not None:
            cmd += [flag, str(data[key])]
    if data.get("ssh_known_hosts_file"):
        cmd += ["-o", f"UserKnownHostsFile={data['ssh_known_hosts_file']}"]
    remote = _remote(remote, sudo)
    return [*cmd, "--", str(data.get("ssh_hostname") or name), *([remote] if remote else [])]


def _remote(remote: str | None, sudo: bool) -> str:
    return ("sudo -H -n sh -s" if sudo else "sh -s") if remote is None else remote  # None: a script on stdin


def _private_dir() -> str:
    """A new 0700 directory under $TMPDIR (tempfile.mkdtemp's guarantee, without its import)."""
    base = os.environ.get("TMPDIR") or "/tmp"
    while True:
        path = os.path.join(base, f"lamina-ssh-{os.urandom(6).hex()}")
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue


_LIVE: dict[str, tuple[str, ...]] = {}  # host name -> options that reuse its open connection


def reuse(name: str) -> tuple[str, ...]:
    """ssh options that run a command on the host's open connection, if there is one."""
    return _LIVE.get(name, ())


class Connections:
    """One authenticated OpenSSH connection per host, opened at once and used later.

    The connections are made while the controller is still planning (that hides the SSH
    handshake behind the CPU work); they run nothing until `run`, so a spec found bad
    meanwhile has touched no host: closing them leaves only an sshd log line. A host's
    scripts all go to one shell on its connection (`_Shell`, started by the first `run`):
    one session and one ssh process however many scripts a converge runs. Commands that
    need their own stdin (locks, layer streams) are further ssh clients on the connection
    (`argv`)."""

    def __init__(self, hosts: Mapping[str, Mapping[str, Any]], sudo: bool):
        self.dir = _private_dir()  # the control sockets are ours alone
        self.hosts, self.sudo = dict(hosts), sudo
        self.masters: dict[str, _Spawned] = {}
        self.shells: dict[str, _Shell] = {}
        self.index = {name: n for n, name in enumerate(self.hosts)}  # control socket of each
        for n, (name, data) in enumerate(self.hosts.items()):
            self.masters[name] = _Spawned(argv(name, data, sudo, remote="", extra=self._control(n, "yes") + ("-N",)))
            _LIVE[name] = self._control(n, "no")
        _imports()
        self.starting = {name: threading.Lock() for name in self.hosts}

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

    def _socket(self, n: int) -> str:
        return os.path.join(self.dir, str(n))

    def _control(self, n: int, master: str) -> tuple[str, ...]:
        return ("-o", f"ControlPath={self._socket(n)}", "-o", f"ControlMaster={master}", "-o", "ControlPersist=no")

    def _ready(self, name: str, n: int) -> None:
        """Wait until the host's connection is up (or failed: then ssh connects afresh and says why)."""
        deadline = time.monotonic() + CONNECT_TIMEOUT + 2
        sock = self._socket(n)
        while not os.path.exists(sock) and self.masters[name].poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)

    def argv(self, name: str, remote: str | None = None) -> list[str]:
        """`ssh` on the host's open connection: REMOTE, or (default) a script on stdin."""
        n = self.index[name]
        self._ready(name, n)
        return argv(name, self.hosts[name], self.sudo, remote=remote, extra=self._control(n, "no"))

    def open(self, name: str, remote: str | None = None) -> mux.Session | subprocess.Popen:
        """A session on the host's open connection running REMOTE (default: `sh -s`), with
        pipes for its stdin, stdout and stderr: asked of the master directly (mux.Session),
        else from an ssh client, which also connects afresh and says why if the master is gone."""
        from . import mux  # socket, struct: after the masters are spawned

        n = self.index[name]
        self._ready(name, n)
        if self.masters[name].poll() is None:
            try:
                return mux.Session(self._socket(n), _remote(remote, self.sudo))
            except (OSError, EOFError, mux.Refused):
                pass
        return subprocess.Popen(self.argv(name, remote), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

    def _shell(self, name: str) -> _Shell | Outcome:
        """The host's shell, started on first use; or why there is none."""
        with self.starting[name]:
            if name not in self.shells:
                self._ready(name, self.index[name])
                if self.masters[name].poll() is not None:  # it could not connect: don't wait a timeout again
                    return Outcome(False, "", "no connection")
                try:
                    self.shells[name] = _Shell(self.open(name))
                except OSError as e:  # no process to be had (fds, memory): the host fails alone
                    return Outcome(False, "", str(e))
        return self.shells[name]

    def run(self, name: str, script: str, timeout: float = 600, toplevel: bool = False) -> Outcome | None:
        """Run a script through `sh -s` (under sudo when asked) on the host's connection: in
        its shell, or in a session of its own while the shell is busy or gone. `toplevel`:
        in the shell itself, not a subshell, so that what the script sets up (an open file,
        a trap) lasts as long as the shell; None then when the shell cannot take it."""
        shell = self._shell(name)
        if isinstance(shell, Outcome):
            return shell
        if shell.lock.acquire(blocking=False):
            try:
                if shell.alive and shell.quiet():
                    return shell.run(script, timeout, toplevel)
            finally:
                shell.lock.release()
        if toplevel:
            return None
        try:
            done = subprocess.run(self.argv(name), input=script.encode(errors="surrogateescape"),
                                  capture_output=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            return Outcome(False, "", str(e))
        return Outcome(done.returncode == 0, _text(done.stdout), _text(done.stderr))

    def release(self, name: str) -> None:
        """The host needs no more scripts: its shell may end now (`close` waits for it)."""
        shell = self.shells.get(name)
        if shell is not None and shell.lock.acquire(blocking=False):
            shell.alive = False
            shell.end()
            shell.lock.release()

    def run_all(self, scripts: Mapping[str, str], timeout: float = 600) -> dict[str, Outcome]:
        """Run each host's script on its connection, every host at once."""
        return self.each(lambda name: self.run(name, scripts[name], timeout), scripts)

    @staticmethod
    def each(work, names):
        """work(name) for every name, all at once (a thread each: the work is waiting on ssh);
        the first exception raised is raised again once all are done."""
        names = list(names)
        results, errors, slots = {}, [], threading.BoundedSemaphore(32)

        def one(name):
            try:
                with slots:
                    results[name] = work(name)
            except BaseException as e:  # noqa: BLE001 - handed to the caller below
                errors.append(e)

        threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return {n: results[n] for n in names}

    def _terminate(self, names: list[str]) -> None:
        """Ask the masters to exit through their control sockets (SIGTERM to one that cannot
        be asked): OpenSSH 9.2's client can miss a SIGTERM that lands just before it polls (it
        wakes at its next timeout, seconds later)."""
        from . import mux

        sockets = {self._socket(self.index[name]): name for name in names}
        for path in mux.terminate(sockets):
            self.masters[sockets[path]].terminate()

    def close(self, wait: bool = True) -> None:
        """End the shells (end of input), then the connections; a master that has not gone
        after a moment is killed: nothing runs on it any more. With `wait` False (a run that
        only read), nothing is waited for but each master's word that it is going: it ends
        its sessions and exits by itself, and its socket is removed here."""
        for name in self.masters:
            _LIVE.pop(name, None)
        if wait:
            for shell in self.shells.values():
                shell.end()
            _ended([s.proc for s in self.shells.values()], 5)
        self._terminate([name for name, master in self.masters.items() if master.poll() is None])
        if wait:
            _ended(self.masters.values(), 0.3)
        for shell in self.shells.values():
            shell.close()
        for n in self.index.values():
            try:
                os.unlink(self._socket(n))  # a master that has gone removed its own
            except FileNotFoundError:
                pass
        try:
            os.rmdir(self.dir)
        except OSError:
            import shutil

            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Connections:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _imports() -> None:
    """This module's other imports, made once the masters are spawned (each use calls it)."""
    global re, select, subprocess, threading
    import re
    import select
    import subprocess
    import threading


class _Spawned:
    """A process spawned with os.posix_spawn, its stdio on /dev/null, and the part of Popen's
    interface that masters need: the first connections start before subprocess is imported."""

    def __init__(self, argv: list[str]):
        self.args, self.returncode = argv, None
        null = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, flags, 0)
                for fd, flags in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY))]
        # SIGPIPE and SIGXFSZ back to their defaults, as Popen does (Python ignores them)
        self.pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=null, setsigdef=(13, 25))

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere
                pid, status = self.pid, 255 << 8
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.002)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(15)

    def kill(self) -> None:
        self.send_signal(9)


def _ended(procs, grace: float) -> None:
    """Wait up to `grace` seconds in all for the processes to exit; kill those that did not."""
    _imports()
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _text(data: bytes) -> str:
    return data.decode(errors="surrogateescape")  # mount points need not be UTF-8


class _Shell:
    """A session on the host's connection: a shell that runs each script it is sent in a
    subshell (no variable, directory or `exit` of one reaches the next; stdin is /dev/null,
    so a script cannot read the ones after it), then prints a marker with a random nonce and
    the exit status on stdout, and the marker on stderr. The output before is the script's;
    output after it (a process the script left behind, still writing) ends the shell's use."""

    def __init__(self, proc: mux.Session | subprocess.Popen):
        _imports()
        self.proc = proc
        self.lock, self.alive = threading.Lock(), True

    def run(self, script: str, timeout: float, toplevel: bool = False) -> Outcome:
        mark = f"@@lamina-done-{os.urandom(8).hex()}"
        body = f"{script}\n" if toplevel else f"(\n{script}\n) </dev/null\n"
        payload = f"{body}printf '\\n%s %s\\n' {mark} \"$?\"; printf '\\n%s\\n' {mark} >&2\n"
        try:
            self.proc.stdin.write(payload.encode(errors="surrogateescape"))
            self.proc.stdin.flush()
        except OSError:  # the session is gone (no connection, sudo refused): say why
            return self._dead(bytearray(), bytearray())
        out, err = bytearray(), bytearray()
        end_out = re.compile(rb"\n" + mark.encode() + rb" (\d+)\n")
        end_err = f"\n{mark}\n".encode()
        rc = stdout = stderr = None
        poll = select.poll()
        fds = {self.proc.stdout.fileno(): out, self.proc.stderr.fileno(): err}
        for fd in fds:
            poll.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while stdout is None or stderr is None:
            left = deadline - time.monotonic()
            if left <= 0:
                self.alive = False  # still busy with this script: later ones get their own session
                return Outcome(False, _text(out), f"timed out after {timeout:g} s")
            scan = max(0, len(out) - len(mark) - 32)  # the marker can only end in what is new
            for fd, _ in poll.poll(left * 1000):
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    return self._dead(out, err)
                fds[fd] += chunk
            if stdout is None and (found := end_out.search(out, scan)):
                rc, stdout = int(found[1]), bytes(out[:found.start()])
                self.alive = found.end() == len(out)
            if stderr is None and (at := err.find(end_err)) >= 0:
                stderr = bytes(err[:at])
                self.alive = self.alive and at + len(end_err) == len(err)
        return Outcome(rc == 0, _text(stdout), _text(stderr))

    def quiet(self) -> bool:
        """Nothing came since the last script's markers; else (a process it left behind still
        writes, or the shell ended) later scripts get sessions of their own."""
        pending = select.poll()
        for stream in (self.proc.stdout, self.proc.stderr):
            pending.register(stream.fileno(), select.POLLIN)
        if pending.poll(0):
            self.alive = False
        return self.alive

    def _dead(self, out: bytearray, err: bytearray) -> Outcome:
        """The shell ended (sudo refused, the connection dropped, or a script's syntax): the
        rest of its output; from now on every run gets a session of its own."""
        self.alive = False
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        out += self.proc.stdout.read()
        err += self.proc.stderr.read()
        return Outcome(False, _text(out), _text(err))

    def end(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def close(self) -> None:
        """Let go of the session: its pipes, and the session itself if it still runs."""
        self.end()
        self.proc.kill()
        self.proc.stdout.close()
        self.proc.stderr.close()
