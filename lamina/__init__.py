"""lamina: Docker's storage model as idempotent infrastructure on plain Linux hosts."""

import os
from pathlib import Path

DEFAULT_STATE_DIR = "/var/lib/lamina"

# Overlay mount data longer than a page is cut by the kernel without an error
# (DESIGN §3); stay clear of it, counting the other options too.
MAX_MOUNT_DATA = 4000

# Mount targets lamina refuses, as given and once resolved on the host.
PROTECTED = ("/proc", "/sys", "/dev", "/boot")


def cache_dir() -> Path:
    """$LAMINA_CACHE_DIR or ~/.cache/lamina, created mode 0700 (an existing dir is left as it is)."""
    env = os.environ.get("LAMINA_CACHE_DIR")
    path = Path(env) if env else Path.home() / ".cache" / "lamina"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
