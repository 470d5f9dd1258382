"""Commands whose input is too big for a command line: a script of a large spec, and a
layer streamed straight into `tar -x` on the host (no file on the host, one pass).

sshd runs an exec request as `sh -c COMMAND`, and Linux refuses one argument over 128 KiB
(a spec of 200 containers makes a ~400 KiB script). So the script goes on stdin instead.
Bulk data goes through the system's OpenSSH client when the host's inventory data allows
(it runs at wire speed, one process per host in parallel); paramiko — pyinfra's
connection, one CPU for every host — is the fallback.
"""

from __future__ import annotations

import hashlib
import os
import select
import shlex
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from . import sshrun

CHUNK = 1 << 20
BIG = 64 << 10  # scripts above this go on stdin rather than on the command line


@dataclass(frozen=True)
class Done:
    ok: bool
    stdout: list[str]
    stderr: list[str]
    text: str = ""  # stdout as it came, on lamina's own connections: what the fast path's digests are of


# Connector arguments that change how a command is run (other users, su, doas, passwords):
# only pyinfra's own command building honours them, so such hosts take the file route.
SPECIAL = ("_sudo_user", "_use_sudo_login", "_preserve_sudo_env", "_sudo_password", "_su_user", "_use_su_login",
           "_preserve_su_env", "_su_shell", "_su_password", "_doas", "_doas_user", "_dzdo", "_dzdo_user")


def wrap(command: str, sudo: bool) -> str:
    return f"sudo -H -n sh -c {shlex.quote(command)}" if sudo else command


def run(host, command: str, data: Iterable[bytes | FilePart], sudo: bool, connector_args: dict | None = None,
        spool: str = "/tmp") -> Done:
    """Run `command` on a pyinfra host with `data` as its stdin: through OpenSSH on the fast
    read's connection when the host data allows, else on pyinfra's paramiko connection; for
    other connectors and sudo/su variants, via a file uploaded into `spool` by pyinfra."""
    args = dict(connector_args or {})
    if getattr(host.connector, "client", None) is None or any(args.get(k) for k in SPECIAL):
        return _via_file(host, command, data, spool, {**args, "_sudo": sudo or args.get("_sudo", False)})
    argv = sshrun.argv(host.name, host.data.dict(), sudo=False, remote=wrap(command, sudo),
                       extra=sshrun.reuse(host.name))
    if argv is not None and sshrun.available():
        return openssh(argv, data)
    return _paramiko(host, wrap(command, sudo), data)


def _reader(stream) -> tuple[threading.Thread, list[bytes]]:
    """Read a stream to its end in the background: a remote side that writes a lot while we
    are still sending must never block on a full pipe (nor we on its full stdin)."""
    out: list[bytes] = []
    thread = threading.Thread(target=lambda: out.append(stream.read()), daemon=True)
    thread.start()
    return thread, out


def _done(ok: bool, out: list[bytes], err: list[bytes]) -> Done:
    text = lambda b: b"".join(b).decode(errors="replace").splitlines()  # noqa: E731
    return Done(ok, text(out), text(err))


def openssh(argv: list[str], data: Iterable[bytes | FilePart]) -> Done:
    return stream(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE), data)


def stream(proc, data: Iterable[bytes | FilePart]) -> Done:
    """`data` into a started session's stdin (an ssh client's Popen, or a mux.Session)."""
    readers = [_reader(proc.stdout), _reader(proc.stderr)]
    try:
        for chunk in data:
            if isinstance(chunk, FilePart):
                proc.stdin.flush()
                _sendfile(proc.stdin.fileno(), chunk)
            else:
                proc.stdin.write(chunk)
    except BrokenPipeError:
        pass  # the remote side stopped reading: its exit status and stderr say why
    except BaseException:
        proc.kill()  # cut the stream short: the host stores nothing
        proc.wait()
        raise
    finally:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
    for thread, _ in readers:
        thread.join()
    return _done(proc.wait() == 0, readers[0][1], readers[1][1])


def _sendfile(out: int, part: FilePart) -> None:
    sent = 0
    while sent < part.size:
        try:
            n = os.sendfile(out, part.fd, part.offset + sent, part.size - sent)
        except BlockingIOError:  # a non-blocking pipe (gevent's, inside pyinfra): wait until it drains
            writable = select.poll()
            writable.register(out, select.POLLOUT)
            writable.poll()
            continue
        if n == 0:
            raise Corrupt(f"the layer file ended {part.size - sent} bytes early (changed while it was sent)")
        sent += n


def _paramiko(host, command: str, data: Iterable[bytes | FilePart]) -> Done:
    channel = host.connector.client.get_transport().open_session()
    try:  # an exception while sending closes the channel before EOF: the host stores nothing
        channel.exec_command(command)
        readers = [_reader(channel.makefile("rb")), _reader(channel.makefile_stderr("rb"))]
        for chunk in data:
            channel.sendall(as_bytes(chunk))
        channel.shutdown_write()
        for thread, _ in readers:
            thread.join()
        status = channel.recv_exit_status()
    finally:
        channel.close()
    return _done(status == 0, readers[0][1], readers[1][1])


def _via_file(host, command: str, data: Iterable[bytes | FilePart], spool: str, args: dict) -> Done:
    """The data as a file uploaded by pyinfra (any connector, any sudo settings), then the
    command with that file as its stdin."""
    remote = f"{spool}/lamina-stdin.{uuid.uuid4().hex}"
    with tempfile.NamedTemporaryFile() as local:
        for chunk in data:
            local.write(as_bytes(chunk))
        local.flush()
        if not host.put_file(local.name, remote, print_output=False, **args):
            return Done(False, [], [f"upload to {remote} failed"])
    q = shlex.quote(remote)
    ok, output = host.run_shell_command(f"sh -c {shlex.quote(command)} < {q}; rc=$?; rm -f -- {q}; exit $rc",
                                        print_output=False, **args)
    return Done(ok, output.stdout_lines, output.stderr_lines)


class Corrupt(Exception):
    pass


class FilePart:
    """`size` bytes of an open file from `offset`: the OpenSSH transport hands them to the
    kernel (sendfile into ssh's stdin, no copy through Python); the others read them. Valid
    until the next chunk is asked for (the generator closes the file at its end)."""

    __slots__ = ("fd", "offset", "size")

    def __init__(self, fd: int, offset: int, size: int):
        self.fd, self.offset, self.size = fd, offset, size

    def read(self) -> bytes:
        return os.pread(self.fd, self.size, self.offset)


def as_bytes(chunk: bytes | FilePart) -> bytes:
    return chunk.read() if isinstance(chunk, FilePart) else chunk


class _Digest:
    """The sha256 of one layer file, computed once per run by a thread of its own (hashlib lets
    go of the GIL) while the streams that send the file to several hosts run; each stream
    waits for it before its last chunk."""

    def __init__(self) -> None:
        self.done, self.value = threading.Event(), ("", -1)

    def start(self, fd: int) -> None:
        threading.Thread(target=self._hash, args=(os.dup(fd),), daemon=True).start()

    def _hash(self, fd: int) -> None:
        try:
            sha, offset = hashlib.sha256(), 0
            while chunk := os.pread(fd, CHUNK, offset):
                sha.update(chunk)
                offset += len(chunk)
            self.value = sha.hexdigest(), offset
        except OSError:
            pass  # stays ("", -1): the stream reports the file corrupt
        finally:
            os.close(fd)
            self.done.set()

    def result(self) -> tuple[str, int]:
        self.done.wait()
        return self.value


_DIGESTS: dict[tuple, _Digest] = {}
_DIGESTS_LOCK = threading.Lock()


def verified_chunks(path: str, sha256: str, size: int | None = None) -> Iterable[bytes | FilePart]:
    """The file's bytes as FileParts, then the last chunk as bytes, held back until the whole
    digest (and size) matches, so a corrupt file never reaches the host in full (Corrupt
    instead). The digest is computed once per file per run, however many hosts it goes to."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())  # a rewritten file (new inode or mtime) is hashed afresh
        key = (path, sha256, st.st_ino, st.st_mtime_ns, st.st_size)
        with _DIGESTS_LOCK:  # nothing in here may switch: this lock may predate gevent's patching
            shared = _DIGESTS.get(key)
            fresh = shared is None
            if fresh:
                shared = _DIGESTS[key] = _Digest()
        if fresh:
            shared.start(f.fileno())
        body = max(0, st.st_size - CHUNK)
        for offset in range(0, body, CHUNK):
            yield FilePart(f.fileno(), offset, min(CHUNK, body - offset))
        last = os.pread(f.fileno(), st.st_size - body + 1, body)  # one byte more: a file that grew shows
        digest, hashed = shared.result()
        now = os.fstat(f.fileno())  # the digest is of one read, the stream another: same file throughout
        if hashed != st.st_size or digest != sha256 or (size is not None and st.st_size != size) \
                or body + len(last) != st.st_size or (now.st_size, now.st_mtime_ns, now.st_ctime_ns) != \
                (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            raise Corrupt(f"{path}: sha256 {digest} ({hashed} bytes), want {sha256} ({size} bytes)")
        if last:
            yield last
