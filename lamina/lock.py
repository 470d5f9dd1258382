"""A per-host lock, so two applies never interleave their changes on one host.

The lock is a kernel lock (util-linux `flock`) held by the run's shell on the host (`in_shell`;
on pyinfra's connections, by a command of its own, `command`) for as long as its SSH channel
stays open: it goes away with the connection, so a crashed or killed apply never leaves a
stale lock behind. Every script that changes the host holds
`apply.busy` shared while it runs (see BUSY), and the lock is released only once they
are done: a script that outlives a killed controller never overlaps the next run.
Only runs that change something take it — a no-op run reads, and stays at its two
remote commands.
"""

from __future__ import annotations

import getpass
import os
import shlex
import socket
import time

LOCK_DIR = "/run/lamina"  # tmpfs: a reboot clears it too
DEFAULT_TIMEOUT = 60.0

# The first lines of every script that changes a host. A script of the shell that holds the
# lock ($lamina_held, exported by `in_shell`) has fd 9 open on the lock already (it outlives
# that shell too): no `flock` process for it.
BUSY = (f"[ -n \"${{lamina_held:-}}\" ] || {{ {{ [ -d {LOCK_DIR} ] || mkdir -p -m 700 {LOCK_DIR}; }} && "
        f"exec 8>>{LOCK_DIR}/apply.busy && flock -s 8; }}")


def holder() -> str:
    return (f"lamina apply by {getpass.getuser()}@{socket.gethostname()} pid {os.getpid()} "
            f"since {time.strftime('%Y-%m-%d %H:%M:%S')}")


def command(timeout: float, sudo: bool, password_on_stdin: bool = False) -> str:
    """The lock as a remote command of its own (pyinfra's connections; a shell that is busy):
    `in_shell`'s, then it holds the lock until its stdin closes (the connection going away
    closes it too), and its EXIT trap waits for the run's other scripts. With
    `password_on_stdin`, sudo reads its password as the first line of stdin."""
    script = f'{in_shell(timeout)}\n[ -n "$lamina_held" ] || exit 1\ncat >/dev/null'
    cmd = f"sh -c {shlex.quote(script)} lamina-lock"
    if not sudo:
        return cmd
    return f"sudo -S -p '' -H {cmd}" if password_on_stdin else f"sudo -n -H {cmd}"


def in_shell(timeout: float, directory: str = LOCK_DIR) -> str:
    """The lock taken by the host's lamina shell itself (sshrun `toplevel`): fd 9 holds it
    for as long as that shell lives, and the scripts it runs inherit it. When the shell's
    input ends (the run is done, or the connection is gone), its EXIT trap waits for this
    run's other scripts (layer streams, holding apply.busy shared) before it lets go. It
    prints `locked` (and sets $lamina_held), or `busy HOLDER`; it reads nothing from stdin,
    which carries the shell's next scripts."""
    d = shlex.quote(directory)
    return (f"lamina_held=; {{ [ -d {d} ] || mkdir -p -m 700 -- {d}; }} && exec 9>>{d}/apply.lock && "
            f"if flock -w {int(timeout)} 9; then printf '%s\n' {shlex.quote(holder())} > {d}/apply.holder && "
            f"trap 'exec 8>>{d}/apply.busy && flock -x 8' EXIT && export lamina_held=1 && echo locked; "
            f"else printf 'busy %s\n' \"$(cat -- {d}/apply.holder 2>/dev/null || echo 'an unknown holder')\"; "
            f"exec 9>&-; fi")


def busy(reply: str, stderr: str, timeout: float) -> str:
    """The user's message when the lock was not taken."""
    if reply.startswith("busy "):
        return f"locked by {reply.removeprefix('busy ')}; gave up after {int(timeout)} s (--lock-timeout)"
    return f"could not take the host's lock: {'; '.join(stderr.strip().splitlines()) or 'no answer'}"
