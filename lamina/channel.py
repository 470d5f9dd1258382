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
import shlex
import subprocess
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


def wrap(command: str, sudo: bool) -> str:
    return f"sudo -H -n sh -c {shlex.quote(command)}" if sudo else command


def run(host, command: str, data: Iterable[bytes], sudo: bool) -> Done:
    """Run `command` on a pyinfra host with `data` as its stdin."""
    argv = sshrun.argv(host.name, host.data.dict(), sudo=False, remote=wrap(command, sudo),
                       extra=sshrun.reuse(host.name))
    if argv is not None and sshrun.available():
        return _openssh(argv, data)
    return _paramiko(host, wrap(command, sudo), data)


def _openssh(argv: list[str], data: Iterable[bytes]) -> Done:
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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
        if proc.stdin and not proc.stdin.closed:
            proc.stdin.close()
    out, err = proc.communicate()
    return Done(proc.returncode == 0, out.decode(errors="replace").splitlines(),
                err.decode(errors="replace").splitlines())


def _paramiko(host, command: str, data: Iterable[bytes]) -> Done:
    channel = host.connector.client.get_transport().open_session()
    try:  # an exception while sending closes the channel before EOF: the host stores nothing
        channel.exec_command(command)
        for chunk in data:
            channel.sendall(chunk)
        channel.shutdown_write()
        out = channel.makefile("rb").read()
        err = channel.makefile_stderr("rb").read()
        status = channel.recv_exit_status()
    finally:
        channel.close()
    return Done(status == 0, out.decode(errors="replace").splitlines(), err.decode(errors="replace").splitlines())


class Corrupt(Exception):
    pass


def verified_chunks(path: str, sha256: str) -> Iterable[bytes]:
    """The file's bytes, hashed on the way; the last chunk is held back until the whole
    digest matches, so a corrupt file never reaches the host in full (Corrupt instead)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        held = f.read(CHUNK)
        while held:
            digest.update(held)
            chunk = f.read(CHUNK)
            if not chunk:
                break
            yield held
            held = chunk
    if digest.hexdigest() != sha256:
        raise Corrupt(f"{path}: sha256 {digest.hexdigest()}, want {sha256}")
    if held:
        yield held


def run_script(state, host, script: str, sudo: bool) -> bool:
    """pyinfra FunctionCommand body: a (big) shell script through `sh -s`, failing the host
    with the script's own messages."""
    import logging

    done = run(host, "sh -s", [script.encode()], sudo)
    if not done.ok:
        lines = [x.strip() for x in done.stderr if x.strip()]
        host.lamina_failures = [*getattr(host, "lamina_failures", []), *lines]
        for line in lines or ["the script failed"]:
            host.log(line, log_func=logging.getLogger("pyinfra").error)
    return done.ok
