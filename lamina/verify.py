"""`lamina verify`: the specs become pytest-testinfra checks run over SSH.

The checks live in `verify_checks.py` (a pytest module shipped in the package). This
module renders and validates the specs first (bad input: exit 2, no connection), writes
an ssh_config for testinfra's ssh backend from the inventory (host keys checked,
connections reused), and runs pytest on the checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import LaminaError, SpecInvalid
from .runner import host_plan, load_inventory

CHECKS = Path(__file__).with_name("verify_checks.py")


def ssh_config_entry(name: str, data: dict[str, Any], control_dir: str) -> str:
    """One `Host` block that reaches an inventory host as pyinfra would."""
    lines = [f"Host {name}", f"  HostName {data.get('ssh_hostname') or name}"]
    for key, option in (("ssh_user", "User"), ("ssh_port", "Port"), ("ssh_key", "IdentityFile"),
                        ("ssh_known_hosts_file", "UserKnownHostsFile")):
        if data.get(key):
            lines.append(f"  {option} {data[key]}")
    if data.get("ssh_key"):
        lines.append("  IdentitiesOnly yes")
    strict = str(data.get("ssh_strict_host_key_checking") or "yes")
    lines += [
        f"  StrictHostKeyChecking {strict}",
        "  BatchMode yes",
        "  ConnectTimeout 10",
        "  ControlMaster auto",
        f"  ControlPath {control_dir}/%C",
        "  ControlPersist 30",
    ]
    if data.get("ssh_config_file"):  # the rest as the inventory's own ssh_config says (first value wins)
        lines.append(f"  Include {Path(data['ssh_config_file']).resolve()}")
    return "\n".join(lines) + "\n"


def verify(inventory_path: str, specs: Sequence[str], *, sudo: bool = False,
           limit: Sequence[str] = (), junitxml: str | None = None, quiet: bool = False) -> int:
    inventory = load_inventory(inventory_path)
    hosts = [h for h in inventory if not limit or h.name in limit]
    if not hosts:
        raise LaminaError(f"no hosts to verify in {inventory_path}")
    errors = []
    for h in hosts:  # validate everything before connecting anywhere
        try:
            host_plan(h.name, h.data.dict(), specs)
        except SpecInvalid as e:
            errors += [err for err in e.errors if err not in errors]
    if errors:
        raise SpecInvalid(errors)
    with tempfile.TemporaryDirectory(prefix="lamina-verify-") as tmp:
        os.chmod(tmp, 0o700)
        config = Path(tmp, "ssh_config")
        config.write_text("".join(ssh_config_entry(h.name, h.data.dict(), tmp) for h in hosts))
        env = dict(os.environ, LAMINA_VERIFY=json.dumps({
            "inventory": str(Path(inventory_path).resolve()) if Path(inventory_path).exists() else inventory_path,
            "specs": [str(Path(s).resolve()) for s in specs],
            "hosts": [h.name for h in hosts],
            "ssh_config": str(config),
            "sudo": sudo,
        }))
        cmd = [sys.executable, "-m", "pytest", str(CHECKS), "-p", "no:cacheprovider",
               "--rootdir", tmp, "-o", "addopts=", "-o", "python_files=verify_checks.py",
               "-q" if quiet else "-v", "--tb=line"]
        if junitxml:
            cmd.append(f"--junitxml={Path(junitxml).resolve()}")
        return subprocess.call(cmd, env=env, cwd=os.getcwd())
