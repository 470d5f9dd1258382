"""A light reader for the common pyinfra inventories, so that reading hosts needs neither
pyinfra's import (~0.35 s) nor its connection machinery.

It understands a comma-separated host list and an inventory file whose module-level lists
hold host names or ``(name, data)`` tuples — the shapes pyinfra's own docs lead with — and
gives each host exactly the data pyinfra would. Anything else (group data files or group
tuples, connectors like ``@docker/...``, data that changes how pyinfra connects or runs
commands in ways plain OpenSSH cannot mirror) returns None: callers then use pyinfra's
reader and connectors, which handle every form.
"""

from __future__ import annotations

import os
from collections import namedtuple

from . import sshrun
from .errors import LaminaError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# name, data (dict). Light on purpose: read before every run's first connection.
InventoryHost = namedtuple("InventoryHost", "name data")


def read(path: str) -> list[InventoryHost] | None:
    """The hosts of a pyinfra inventory in inventory order, or None when it needs pyinfra."""
    if os.path.isfile(path):
        if not path.endswith(".py") or os.path.exists(os.path.join(os.path.realpath(os.path.dirname(path) or "."),
                                                                   "group_data")):  # where pyinfra looks
            return None
        found = _groups(path)
        if found is None:
            return None
        groups, listed = found
        hosts: dict[str, dict[str, Any]] = {}
        for members in groups:
            for member in members:
                name, data = (member if isinstance(member, tuple) else (member, {}))
                if not isinstance(name, str) or not isinstance(data, dict):
                    return None
                if data and hosts.get(name) and data != hosts[name]:
                    return None  # two different data for one host: let pyinfra merge them
                hosts[name] = hosts.get(name) or data
        if listed is not None:  # a group `all`: exactly its hosts, in its order (other groups give data)
            hosts = {name: hosts[name] for name in listed}
    elif "," in path:
        hosts = {name: {} for name in path.split(",") if name}
    else:
        return None
    if any(name.startswith("@") for name in hosts):
        return None
    if not all(sshrun.supports(d) for d in hosts.values()):
        return None
    return [InventoryHost(name, data) for name, data in hosts.items()]


def _groups(file: str) -> tuple[list[list], list[str] | None] | None:
    """The inventory's groups (lists of hosts), and the names in its group `all` if it has one."""
    namespace: dict[str, Any] = {"__file__": file}
    try:
        with open(file, encoding="utf-8") as f:
            source = f.read()
        exec(compile(source, file, "exec"), namespace)
    except SystemExit as e:  # an inventory may exit with its own message (the lab's does)
        raise LaminaError(str(e.code)) from None
    except Exception:
        return None  # pyinfra's reader reports it, with its own context
    groups = []
    for key, value in sorted(namespace.items(), key=lambda kv: kv[0] != "all"):
        if key.startswith("_"):
            continue
        if isinstance(value, tuple):
            return None  # a (hosts, group data) group
        if isinstance(value, list):
            if not all(isinstance(m, (str, tuple)) for m in value):
                continue  # pyinfra ignores such lists too
            if not all(isinstance(m, str) or (len(m) == 2) for m in value):
                return None
            groups.append(value)
    listed = namespace.get("all")
    if listed is not None and not (isinstance(listed, list) and listed in groups):
        return None
    return groups, None if listed is None else [m[0] if isinstance(m, tuple) else m for m in listed]
