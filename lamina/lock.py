"""A per-host lock, so two applies never interleave their changes on one host.

The lock is a kernel lock (util-linux `flock`) held by a command that runs for as long
as its SSH channel stays open: it goes away with the connection, so a crashed or killed
apply never leaves a stale lock behind. Every script that changes the host holds
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

# Wait for the lock; once held, name the holder and keep the lock until stdin closes.
SCRIPT = r"""
d=$1 wait=$2 holder=$3
mkdir -p -m 700 -- "$d"
exec 9>>"$d/apply.lock"
if ! flock -w "$wait" 9; then
  printf 'busy %s\n' "$(cat -- "$d/apply.holder" 2>/dev/null || echo 'an unknown holder')"
  exit 1
fi
printf '%s\n' "$holder" > "$d/apply.holder"
echo locked
cat >/dev/null
# The connection is gone (done, or the controller died): scripts of this run that are
# still going hold apply.busy shared; keep the lock until they are finished too.
flock -x "$d/apply.busy" true
"""


# The first lines of every script that changes a host.
BUSY = f"mkdir -p -m 700 {LOCK_DIR} && exec 8>>{LOCK_DIR}/apply.busy && flock -s 8"


def holder() -> str:
    return (f"lamina apply by {getpass.getuser()}@{socket.gethostname()} pid {os.getpid()} "
            f"since {time.strftime('%Y-%m-%d %H:%M:%S')}")


class LockBusy(Exception):
    pass


def acquire(state, host, timeout: float, sudo: bool) -> bool:
    """pyinfra FunctionCommand body: take the host's lock, waiting up to `timeout` seconds.
    The channel that holds it is kept on the host object until the connection closes."""
    if getattr(host, "lamina_lock", None) is not None:
        return True
    client = getattr(host.connector, "client", None)
    if client is None:  # not an SSH host (e.g. @local): nothing to hold the lock open with
        return True
    command = " ".join(["sh", "-c", shlex.quote(SCRIPT), "lamina-lock",
                        *map(shlex.quote, (LOCK_DIR, str(int(timeout)), holder()))])
    if sudo:
        command = f"sudo -n -H {command}"
    channel = client.get_transport().open_session()
    channel.exec_command(command)
    reply = channel.makefile("r").readline().strip()
    if reply != "locked":
        channel.close()
        detail = reply.removeprefix("busy ") if reply.startswith("busy ") else \
            (channel.makefile_stderr("r").read().decode(errors="replace").strip() or "no answer")
        message = f"locked by {detail}; gave up after {int(timeout)} s (--lock-timeout)"
        host.lamina_failures = [*getattr(host, "lamina_failures", []), message]
        import logging

        host.log(f"lamina: {message}", log_func=logging.getLogger("pyinfra").error)
        return False
    host.lamina_lock = channel
    return True
