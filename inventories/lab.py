"""pyinfra inventory of the test hosts started by ``lamina lab up``.

    lamina lab up
    pyinfra inventories/lab.py exec -- hostname

Follows ``LAMINA_LAB_DIR`` (the test suite's lab: ``LAMINA_LAB_DIR=/run/lamina/testlab``).
Host-key checking is on: the lab's known_hosts holds each host's key ("NAME,IP key").

``LAMINA_LAB_USER`` logs in as one of the hosts' non-root users instead of root: ``lamina``
(sudo without a password), ``lampw`` (sudo with the lab's password, given to pyinfra as
``_sudo_password``) or ``nosudo``; run lamina with ``--sudo`` (pyinfra: ``--sudo``) then.
"""

import os as _os

from lamina import lab as _lab

_user = _os.environ.get("LAMINA_LAB_USER") or "root"

_hosts = _lab.hosts()
if not _hosts:  # SystemExit: pyinfra prints the message, no traceback
    raise SystemExit(
        f"inventories/lab.py: the lab in {_lab.lab_dir()} is down: start it with `lamina lab up`"
    )

# group "lab": (name, data) per host; pyinfra connects to ssh_hostname, not to the name
lab = [
    (
        _h.name,
        {
            "ssh_hostname": _h.address,
            "ssh_user": _user,
            **({"_sudo_password": _lab.sudo_password()} if _user == _lab.USERS["sudo_password"] else {}),
            "ssh_key": str(_lab.identity()),
            "ssh_known_hosts_file": str(_lab.known_hosts()),
            "ssh_strict_host_key_checking": "yes",
            "lamina_roles": ["demo"],
            # the lab's ssh_config too, so that every SSH client (pyinfra's, OpenSSH for lamina's
            # fast path, testinfra's) connects with the same settings as `lamina lab ssh`
            "ssh_config_file": str(_lab.ssh_config()),
        },
    )
    for _h in _hosts
]
