"""lamina: Docker's storage model as idempotent infrastructure on plain Linux hosts."""

DEFAULT_STATE_DIR = "/var/lib/lamina"
