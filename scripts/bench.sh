#!/usr/bin/env bash
# The benchmark suite (bench/run.py): installs what it needs (the test suite's deps, then
# Ansible and matplotlib in .venv-bench), starts its own test hosts, measures lamina against
# pyinfra, Ansible and the raw-SSH floor, and writes BENCHMARKS.md, bench/results.json and
# bench/results.png. Run as root. --quick: a smoke run of a few minutes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/bootstrap.sh
exec .venv/bin/python bench/run.py "$@"
