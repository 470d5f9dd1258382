"""lamina: Docker's storage model as idempotent infrastructure on plain Linux hosts."""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

DEFAULT_STATE_DIR = "/var/lib/lamina"

# Overlay mount data longer than a page is cut by the kernel without an error
# (DESIGN §3); stay clear of it, counting the other options too.
MAX_MOUNT_DATA = 4000

# Mount targets lamina refuses, as given and once resolved on the host.
PROTECTED = ("/proc", "/sys", "/dev", "/boot")


def cache_path() -> str:
    """$LAMINA_CACHE_DIR or ~/.cache/lamina, created mode 0700 (an existing dir is left as it is)."""
    path = os.environ.get("LAMINA_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "lamina")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def cache_dir() -> Path:
    """cache_path() as a Path (pathlib is imported here, not by every run)."""
    from pathlib import Path

    return Path(cache_path())
