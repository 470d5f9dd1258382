"""lamina inside your own pyinfra deploys.

    from lamina.pyinfra import apply_spec, apply_roles

    apply_spec("specs/storage.yml")      # this host's spec, rendered with its data
    apply_roles()                        # roles/<role>/spec.yml for each role in host.data.lamina_roles

Each call is one pyinfra operation (one fact read, at most one command per host) and
takes pyinfra's global arguments (`_sudo`, `_if`, ...) like any other operation.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.api.exceptions import PyinfraError

from .errors import LaminaError
from .operations import converge
from .runner import ROLES_DIR, host_plan, role_specs


def apply_spec(*specs: str | Path, roles_dir: str | Path = ROLES_DIR, **global_args):
    """Converge the current host to the given spec files (its roles when none given)."""
    try:
        plan = host_plan(host.name, host.data.dict(), list(specs), Path(roles_dir))
    except LaminaError as e:  # a spec error: fail the deploy before any command runs
        raise PyinfraError(f"lamina: {e}") from None
    global_args.setdefault("name", f"lamina: {', '.join(str(s) for s in specs)}")
    return converge(plans={host.name: plan}, **global_args)


def apply_roles(roles=None, roles_dir: str | Path = ROLES_DIR, **global_args):
    """Converge the current host to roles/<role>/spec.yml for each role (default: the
    host's `lamina_roles` inventory data)."""
    roles = host.data.get("lamina_roles", []) if roles is None else roles
    try:
        specs = role_specs(roles, Path(roles_dir))
    except LaminaError as e:
        raise PyinfraError(f"lamina: {e}") from None
    if not specs:
        return None
    global_args.setdefault("name", f"lamina: roles {', '.join(map(str, roles))}")
    return apply_spec(*specs, roles_dir=roles_dir, **global_args)
