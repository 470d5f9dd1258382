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


# Connector arguments that change how a command is run (other users, su, doas, passwords):
# only pyinfra's own command building honours them, so such hosts take the file route.
SPECIAL = ("_sudo_user", "_use_sudo_login", "_preserve_sudo_env", "_sudo_password", "_su_user", "_use_su_login",
           "_preserve_su_env", "_su_shell", "_su_password", "_doas", "_doas_user", "_dzdo", "_dzdo_user")


def wrap(command: str, sudo: bool) -> str:
    return f"sudo -H -n sh -c {shlex.quote(command)}" if sudo else command


def run(host, command: str, data: Iterable[bytes], sudo: bool, connector_args: dict | None = None,
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


def openssh(argv: list[str], data: Iterable[bytes]) -> Done:
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    readers = [_reader(proc.stdout), _reader(proc.stderr)]
    try:
        for chunk in data:
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


def _paramiko(host, command: str, data: Iterable[bytes]) -> Done:
    channel = host.connector.client.get_transport().open_session()
    try:  # an exception while sending closes the channel before EOF: the host stores nothing
        channel.exec_command(command)
        readers = [_reader(channel.makefile("rb")), _reader(channel.makefile_stderr("rb"))]
        for chunk in data:
            channel.sendall(chunk)
        channel.shutdown_write()
        for thread, _ in readers:
            thread.join()
        status = channel.recv_exit_status()
    finally:
        channel.close()
    return _done(status == 0, readers[0][1], readers[1][1])


def _via_file(host, command: str, data: Iterable[bytes], spool: str, args: dict) -> Done:
    """The data as a file uploaded by pyinfra (any connector, any sudo settings), then the
    command with that file as its stdin."""
    remote = f"{spool}/lamina-stdin.{uuid.uuid4().hex}"
    with tempfile.NamedTemporaryFile() as local:
        for chunk in data:
            local.write(chunk)
        local.flush()
        if not host.put_file(local.name, remote, print_output=False, **args):
            return Done(False, [], [f"upload to {remote} failed"])
    q = shlex.quote(remote)
    ok, output = host.run_shell_command(f"sh -c {shlex.quote(command)} < {q}; rc=$?; rm -f -- {q}; exit $rc",
                                        print_output=False, **args)
    return Done(ok, output.stdout_lines, output.stderr_lines)


class Corrupt(Exception):
    pass


class _Digest:
    """One sha256 of a layer file shared by the streams that send it to several hosts at
    once: each chunk is hashed by whichever stream reads it first, so the controller hashes
    a layer once per run, not once per host."""

    def __init__(self) -> None:
        self.lock, self.sha, self.upto = threading.Lock(), hashlib.sha256(), 0

    def feed(self, offset: int, chunk: bytes) -> None:
        with self.lock:
            if offset == self.upto:  # a stream never gets ahead of what is hashed: it hashed it, or found it done
                self.sha.update(chunk)
                self.upto += len(chunk)

    def result(self) -> tuple[str, int]:
        with self.lock:
            return self.sha.hexdigest(), self.upto


_DIGESTS: dict[tuple, _Digest] = {}
_DIGESTS_LOCK = threading.Lock()


def verified_chunks(path: str, sha256: str, size: int | None = None) -> Iterable[bytes]:
    """The file's bytes, hashed on the way; the last chunk is held back until the whole
    digest (and size) matches, so a corrupt file never reaches the host in full (Corrupt instead)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())  # a rewritten file (new inode or mtime) is hashed afresh
        with _DIGESTS_LOCK:
            shared = _DIGESTS.setdefault((path, sha256, st.st_ino, st.st_mtime_ns, st.st_size), _Digest())
        offset = 0
        held = f.read(CHUNK)
        while held:
            shared.feed(offset, held)
            offset += len(held)
            chunk = f.read(CHUNK)
            if not chunk:
                break
            yield held
            held = chunk
    digest, hashed = shared.result()
    if hashed != offset or digest != sha256 or (size is not None and offset != size):
        raise Corrupt(f"{path}: sha256 {digest} ({offset} bytes), want {sha256} ({size} bytes)")
    if held:
        yield held
