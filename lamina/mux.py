"""Sessions on an OpenSSH master's connection, opened from Python through its control socket
(OpenSSH's PROTOCOL.mux, version 4) rather than by an `ssh` mux client process.

A mux client does nothing but this: it says hello, asks for a session running COMMAND, hands
the master its stdin, stdout and stderr as file descriptors, and waits for the exit status.
Here the three are pipes whose other ends lamina keeps, so the master reads and writes them
directly, as it would a client's; what is saved is the exec of ssh (its start-up, config and
libraries: ~10 ms of CPU) for every script shell, lock and layer stream. A session behaves
like the subprocess.Popen of that client: stdin/stdout/stderr, wait, poll, kill, returncode.
`terminate` ends masters, as `ssh -O exit` does.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
from collections.abc import Iterable

HELLO, NEW_SESSION, TERMINATE, VERSION = 0x00000001, 0x10000002, 0x10000005, 4
S_PERMISSION_DENIED, S_FAILURE, S_EXIT_MESSAGE = 0x80000002, 0x80000003, 0x80000004
S_SESSION_OPENED, S_TTY_ALLOC_FAIL = 0x80000006, 0x80000008
NO_ESCAPE = 0xFFFFFFFF
OPEN_TIMEOUT = 60  # a master that cannot get a channel opened by then: an ssh client tries afresh


class Refused(Exception):
    """The master would not open the session (or spoke another protocol)."""


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class _Control:
    """A connection to the master's control socket: hello said, and the master's read (unless
    `greeted` is False: then by `greeted()`, later)."""

    def __init__(self, control_path: str, timeout: float | None, greeted: bool = True):
        self._buffer = bytearray()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(control_path)
            self.send(struct.pack(">II", HELLO, VERSION))
            if greeted:
                self.greeted()
        except BaseException:
            self._sock.close()
            raise

    def greeted(self) -> None:
        kind, version = struct.unpack(">II", self.packet()[:8])  # extensions follow; none are used
        if kind != HELLO or version != VERSION:
            raise Refused(f"control socket speaks mux protocol {kind:#x}/{version}, not {VERSION}")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._sock.close()

    def send(self, body: bytes) -> None:
        self._sock.sendall(_string(body))

    def packet(self) -> bytes:
        """The next message's body; EOFError when the master closed the socket."""
        while True:
            if len(self._buffer) >= 4:
                size = struct.unpack(">I", self._buffer[:4])[0]
                if len(self._buffer) >= 4 + size:
                    body = bytes(self._buffer[4:4 + size])
                    del self._buffer[:4 + size]
                    return body
            chunk = self._sock.recv(65536)
            if not chunk:
                raise EOFError
            self._buffer += chunk


def terminate(control_paths: Iterable[str], timeout: float = 1) -> list[str]:
    """Ask masters to close their connections and exit (`ssh -O exit`); the control paths of
    those that could not be asked. Unlike SIGTERM, which OpenSSH 9.2's client can miss until
    its next poll timeout, a master acts on it at once. Every master is asked before any
    answer is awaited (one by one, each took a wake-up of a master, ~1.5 ms): a master reads
    its control socket a message at a time, so the request may follow the hello unanswered."""
    controls, failed = {}, []
    for path in control_paths:
        try:
            controls[path] = control = _Control(path, timeout, greeted=False)
            control.send(struct.pack(">II", TERMINATE, 1))
        except (OSError, EOFError, Refused):
            failed.append(path)
    for path, control in controls.items():
        with control:
            if path in failed:
                continue
            try:
                control.greeted()
                control.packet()  # MUX_S_OK, or the socket closing as the master exits
            except EOFError:
                pass
            except (OSError, Refused):
                failed.append(path)
    return failed


class Session(_Control):
    def __init__(self, control_path: str, command: str):
        self.returncode: int | None = None
        self._exit: int | None = None
        super().__init__(control_path, OPEN_TIMEOUT)
        pipes: list[tuple[int, int]] = []  # stdin, stdout, stderr: (read end, write end)
        try:
            self.send(struct.pack(">II", NEW_SESSION, 1) + _string(b"")  # request id, reserved
                      + struct.pack(">IIIII", 0, 0, 0, 0, NO_ESCAPE)  # no tty, X11, agent, subsystem
                      + _string(b"") + _string(command.encode(errors="surrogateescape")))  # no TERM
            while len(pipes) < 3:
                pipes.append(os.pipe())
            for fd in (pipes[0][0], pipes[1][1], pipes[2][1]):  # one byte and one descriptor each, as mm_send_fd
                socket.send_fds(self._sock, [b"\0"], [fd])
            reply = self.packet()
            kind, _ = struct.unpack(">II", reply[:8])
            if kind != S_SESSION_OPENED:
                reason = reply[12:].decode(errors="replace") if kind in (S_FAILURE, S_PERMISSION_DENIED) else ""
                raise Refused(f"the master refused the session: {reason or hex(kind)}")
            self._sock.settimeout(None)
        except BaseException:
            for fd in (fd for pipe in pipes for fd in pipe):
                os.close(fd)
            self._sock.close()
            raise
        for fd in (pipes[0][0], pipes[1][1], pipes[2][1]):
            os.close(fd)  # the master has its own copies
        self.stdin, self.stdout, self.stderr = (os.fdopen(pipes[0][1], "wb"), os.fdopen(pipes[1][0], "rb"),
                                                os.fdopen(pipes[2][0], "rb"))

    def wait(self, timeout: float | None = None) -> int:
        """The remote command's exit status, once the master has closed the session (255 when
        it ended without one: the connection is gone, or the command died of a signal)."""
        if self.returncode is not None:
            return self.returncode
        self._sock.settimeout(timeout)
        try:
            while True:
                body = self.packet()
                if struct.unpack(">I", body[:4])[0] == S_EXIT_MESSAGE:
                    self._exit = struct.unpack(">I", body[8:12])[0]
        except (TimeoutError, BlockingIOError):
            raise subprocess.TimeoutExpired(f"session on {self._sock}", timeout) from None
        except (EOFError, OSError):
            pass
        self._finish()
        return self.returncode

    def poll(self) -> int | None:
        try:
            return self.wait(0)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """Drop the session: the master ends its channel (the remote side's stdin ends)."""
        if self.returncode is None:
            self._finish()

    def _finish(self) -> None:
        self.returncode = self._exit if self._exit is not None else 255
        self._sock.close()
