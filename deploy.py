"""pyinfra entry point: applies the lamina roles named in each host's inventory data.

    pyinfra inventories/lab.py deploy.py        # hosts with lamina_roles = ["demo"]

Mix lamina with your own operations freely; see lamina/pyinfra.py.
"""

from pathlib import Path

from lamina.pyinfra import apply_roles

apply_roles(roles_dir=Path(__file__).resolve().parent / "roles")
