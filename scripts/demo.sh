#!/usr/bin/env bash
# The demo, from nothing: installs what it needs, starts 3 test hosts, applies
# roles/demo to them, re-runs it (zero changes), verifies with testinfra over SSH.
# Run as root on Debian. The hosts stay up afterwards so you can look around.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(id -u)" = 0 ] || { echo "demo: run as root (it creates network namespaces)" >&2; exit 1; }
./scripts/bootstrap.sh
export PATH=$PWD/.venv/bin:$PATH
inv=inventories/lab.py
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
requests() {  # remote commands (ssh session requests) each host has served so far
  python -c 'import sys, lamina.lab as l; print(" ".join(str(len(l.exec_requests(h.name))) for h in l.hosts()))'
}

say "a base image to start from: a busybox root filesystem as a tar"
lamina lab rootfs roles/demo/files/rootfs.tar

say "starting 3 test hosts (network + mount namespaces, each with its own sshd)"
lamina lab up -n 3

say "putting a file named layer.txt in each lower dir by hand (low1, low2, low3)"
for h in $(python -c 'import lamina.lab as l; print(" ".join(h.name for h in l.hosts()))'); do
  lamina lab ssh "$h" 'for i in 1 2 3; do mkdir -p /srv/demo/low$i; echo "from low$i" > /srv/demo/low$i/layer.txt; done'
done

say "plan: what lamina would change on each host, and why"
lamina plan -i "$inv"

say "apply: first converge"
lamina apply -i "$inv"

say "apply again: nothing drifted, so nothing changes"
before=($(requests))
lamina apply -i "$inv"
after=($(requests))
for i in "${!after[@]}"; do
  echo "lab$((i + 1)): $((after[i] - before[i])) remote commands for the no-op run"
done

say "verify: the specs as pytest-testinfra checks over SSH"
lamina verify -i "$inv" -q

say "the highest layer wins: lab1:/srv/demo/merged/layer.txt says"
lamina lab ssh lab1 cat /srv/demo/merged/layer.txt

say "two containers, one image: web1 and web2 share the image's layer directories"
lamina inspect -i "$inv" web1 --host lab1
lamina lab ssh lab1 'M=/var/lib/lamina/containers; echo hello > $M/web1/merged/tmp/only-in-web1;
  echo "web1 wrote /tmp/only-in-web1; its /etc/motd says: $(cat $M/web1/merged/etc/motd)";
  if [ -e $M/web2/merged/tmp/only-in-web1 ]; then echo "web2 sees it (wrong!)"; else echo "web2 does not see it"; fi'

cat <<TXT

Look around:
  lamina lab ssh lab1 'findmnt -R /srv/demo/merged'    the overlay and the mounts inside it
  lamina lab ssh lab1 chroot /var/lib/lamina/containers/web1/merged sh    a shell in a container's tree
  lamina gc -i $inv                        layers no image uses (--yes removes them)
  lamina lab ssh lab2 umount -R /srv/demo/merged       make some drift, then:
  lamina plan  -i $inv                     names exactly that overlay on lab2
  lamina apply -i $inv                     repairs only it
  pyinfra -y $inv deploy.py                the same roles through pyinfra's own CLI
  lamina lab down                                      stop the hosts
(run . .venv/bin/activate first to have lamina and pyinfra on your PATH)
TXT
