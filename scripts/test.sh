#!/usr/bin/env bash
# The whole test suite: lint, unit tests, integration tests on real SSH test hosts.
# Installs what it needs first. Run as root on Debian. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(id -u)" = 0 ] || { echo "test: run as root (test hosts need network namespaces)" >&2; exit 1; }
./scripts/bootstrap.sh
# skopeo reads lamina's docker-save and OCI archives in the unit tests (a test-only tool)
if ! command -v skopeo >/dev/null 2>&1; then
  echo "test: installing skopeo"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends skopeo >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends skopeo >/dev/null; }
fi
.venv/bin/ruff check lamina tests deploy.py inventories roles bench
run() {
  local rc=0
  "$@" || rc=$?
  if [ "$rc" = 5 ]; then echo "test: no tests were collected — that is a failure" >&2; exit 1; fi
  [ "$rc" = 0 ] || exit "$rc"
}
run .venv/bin/python -m pytest "$@"
if [ $# = 0 ]; then
  # The integration tests once more, every lamina command as the hosts' non-root user through
  # sudo (the lab's own harness tests are the same either way).
  echo "test: integration tests again as user lamina with --sudo"
  run env LAMINA_TEST_USER=lamina .venv/bin/python -m pytest -q tests/integration --ignore tests/integration/test_lab.py
fi
