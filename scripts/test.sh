#!/usr/bin/env bash
# The whole test suite: lint, unit tests, integration tests on real SSH test hosts.
# Installs what it needs first. Run as root on Debian. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(id -u)" = 0 ] || { echo "test: run as root (test hosts need network namespaces)" >&2; exit 1; }
./scripts/bootstrap.sh
.venv/bin/ruff check lamina tests deploy.py inventories
rc=0
.venv/bin/python -m pytest "$@" || rc=$?
if [ "$rc" = 5 ]; then echo "test: no tests were collected — that is a failure" >&2; exit 1; fi
exit "$rc"
