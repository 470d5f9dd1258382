"""Where a converge runs its commands: a pyinfra host inside an operation, or the fast
read's OpenSSH connection with no pyinfra at all. Both give the converge the same four
things — run a command, stream data into one, hold the host's lock, let go — so the
steps themselves (lamina/converge.py) are written once.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterable
from typing import Protocol

from . import channel, lock
from .channel import Done, FilePart


class Remote(Protocol):
    name: str
    sudo: bool

    def run(self, command: str) -> Done:
        """Run a shell command (any size) as the run's user, sudo included."""

    def stream(self, command: str, data: Iterable[bytes | FilePart], spool: str) -> Done:
        """Run a command with `data` as its stdin (`spool`: where a host without a stream may stage it)."""

    def lock(self, timeout: float, then: str) -> Done:
        """Take the host's apply lock (Failed when another run holds it past `timeout`), then
        run the command `then` under it: one round trip where the remote can."""

    def close(self) -> None:
        """Done with the host: let go of what `lock` holds."""


class Failed(Exception):
    """A host step failed; the message is for the user, one line."""


def message(done: Done, fallback: str) -> str:
    """A failed command's stderr as one line (lamina's own `lamina: ` prefixes dropped)."""
    lines = [x.strip().removeprefix("lamina: ") for x in done.stderr if x.strip()]
    return "; ".join(lines) or fallback


class PyinfraHost:
    """A pyinfra host, inside an operation's FunctionCommand: commands go through pyinfra's
    connector with the operation's global arguments (`_sudo`, `_sudo_user`, ...)."""

    def __init__(self, state, host, connector_args: dict):
        self.host, self.args = host, dict(connector_args)
        self.name = host.name
        self.sudo = bool(self.args.get("_sudo")) or state.config.SUDO
        self.args["_sudo"] = self.sudo

    def run(self, command: str) -> Done:
        if len(command) > channel.BIG:  # over Linux's limit for one argument: send it on stdin
            return channel.run(self.host, "sh -s", [command.encode()], self.sudo, self.args)
        ok, output = self.host.run_shell_command(command, print_output=False, **self.args)
        return Done(ok, output.stdout_lines, output.stderr_lines)

    def stream(self, command: str, data: Iterable[bytes | FilePart], spool: str) -> Done:
        return channel.run(self.host, command, data, self.sudo, self.args, spool=spool)

    def lock(self, timeout: float, then: str) -> Done:
        self._lock(timeout)
        return self.run(then)

    def _lock(self, timeout: float) -> None:
        if getattr(self.host, "lamina_lock", None) is not None:
            return  # held since an earlier operation of this deploy, until the connection closes
        client = getattr(self.host.connector, "client", None)
        if client is None:  # not an SSH host (e.g. @local): no channel to hold the lock open with
            return
        password = self.args.get("_sudo_password") if self.sudo else None
        held = client.get_transport().open_session()
        held.exec_command(lock.command(timeout, self.sudo, password_on_stdin=bool(password)))
        if password:
            held.sendall(f"{password}\n".encode())
        reply = held.makefile("r").readline().strip()
        if reply != "locked":
            held.close()
            raise Failed(lock.busy(reply, held.makefile_stderr("r").read().decode(errors="replace"), timeout))
        self.host.lamina_lock = held

    def close(self) -> None:
        pass  # the lock goes with pyinfra's connection: later operations of the deploy keep it

    def report(self, error: str) -> None:
        """Make a failure visible in pyinfra's output and in lamina's report."""
        self.host.log(f"lamina: {error}", log_func=logging.getLogger("pyinfra").error)
        self.host.lamina_failures = [*getattr(self.host, "lamina_failures", []), error]


class OpenSSH:
    """A host of the fast read's connections (sshrun.Connections): every command is one
    `ssh` on the open connection, the script on stdin, so no size limit applies."""

    def __init__(self, connections, name: str):
        self.connections, self.name = connections, name
        self.sudo = connections.sudo
        self._lock: subprocess.Popen | None = None
        self._shell_lock = False

    def run(self, command: str) -> Done:
        return _done(self.connections.run(self.name, command))

    def stream(self, command: str, data: Iterable[bytes | FilePart], spool: str) -> Done:
        return channel.stream(self.connections.open(self.name, channel.wrap(command, self.sudo)), data)

    def lock(self, timeout: float, then: str) -> Done:
        if self._shell_lock or self._lock is not None:
            return self.run(then)  # held already
        # the lock and `then` in one script: the shell keeps the lock, `then` runs in a subshell
        script = f'{lock.in_shell(timeout)}\n[ -z "${{lamina_held:-}}" ] || (\n{then}\n) </dev/null'
        held = self.connections.run(self.name, script, timeout + 30, toplevel=True)
        if held is not None:  # the host's shell took it (or said why not); else a session of its own
            reply, _, rest = held.stdout.partition("\n")
            if reply.strip() != "locked":
                raise Failed(lock.busy(reply.strip(), held.stderr, timeout))
            self._shell_lock = True
            return _done(held._replace(stdout=rest))
        self._session_lock(timeout)
        return self.run(then)

    def _session_lock(self, timeout: float) -> None:
        proc = self.connections.open(self.name, lock.command(timeout, self.sudo))
        reply = proc.stdout.readline().decode(errors="replace").strip()
        if reply != "locked":
            proc.stdin.close()
            err = proc.stderr.read().decode(errors="replace")
            proc.wait()
            raise Failed(lock.busy(reply, err, timeout))
        self._lock = proc

    def close(self) -> None:
        """Let go of the lock: the host keeps it until this run's scripts are finished."""
        if self._shell_lock:
            self.connections.release(self.name)  # the shell ends: its EXIT trap, then the lock
            self._shell_lock = False
        if self._lock is not None:
            self._lock.stdin.close()
            try:
                self._lock.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._lock.kill()
            self._lock = None


def _done(out) -> Done:
    return Done(out.ok, out.stdout.splitlines(), out.stderr.splitlines(), out.stdout)
