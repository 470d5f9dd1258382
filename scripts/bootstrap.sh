#!/usr/bin/env bash
# Installs what lamina and its test hosts need on a Debian machine (run as root):
# apt packages, then a venv in .venv with the pinned Python deps and lamina itself.
# Idempotent and quiet when everything is already there.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

need_apt=()
# openssl: hosts hash layers with it when they have it (the tests check both ways)
# sudo: the test hosts' non-root users; debootstrap: test hosts of another Debian userland
for pair in sshd:openssh-server ssh:openssh-client ip:iproute2 unshare:util-linux openssl:openssl sudo:sudo \
    debootstrap:debootstrap; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need_apt+=("${pair#*:}")
done
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
# a static busybox makes the demo's base image (lamina lab rootfs)
dpkg -s busybox-static >/dev/null 2>&1 || need_apt+=(busybox-static)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

venv=$top/.venv
stamp=$venv/.lamina-installed
if [ ! -x "$venv/bin/python" ]; then
  echo "bootstrap: creating $venv"
  python3 -m venv "$venv"
fi
# lamina itself is installed editable as a plain path (.pth), not through setuptools' import
# hook: that hook costs every run ~15 ms of start-up (it imports pathlib, importlib.util...).
mode=compat
# Re-install only when the pins, the project metadata or the install mode changed.
want=$({ cat "$top/requirements.lock" "$top/pyproject.toml"; echo "editable_mode=$mode"; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing Python deps (requirements.lock)"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$top/requirements.lock"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -e "$top" --config-settings "editable_mode=$mode"
  echo "$want" > "$stamp"
fi
# Byte-compile lamina as pip does for a regular install: an editable install skips it, and
# with PYTHONDONTWRITEBYTECODE set every run would compile lamina's modules afresh (~75 ms).
"$venv/bin/python" -m compileall -q "$top/lamina" >/dev/null
