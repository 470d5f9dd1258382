"""The floor of the fan-out benchmark: the demo's end state (roles/demo/spec.yml) made by one
hand-written sh script per host over one ssh connection, every host at once.

It does what the demo asks of a host and nothing else: unpack the two shipped layers (the
rootfs and the site) from one tar on stdin, build the run step in a chroot on an overlay of
them, mount both containers (overlay, volume, read-only bind), the demo overlay with its
volume, read-only bind and tmpfs, and the bind outside it. No lock, digest, record, boot
persistence or check: what lamina does on top of that is its overhead. Its state lives under
/srv/fl and /mnt/fl-shared, which the bench's reset clears with lamina's.

Its 20-hosts / 1-host ratio is what this machine allows: the test hosts are namespaces on
the controller's own cores, so their work does not run in parallel as real hosts' would.
"""

from __future__ import annotations

import io
import shlex
import tarfile
from pathlib import Path

ROOT = "/srv/fl"
DEMO = "/srv/demo"  # the demo's prefix: its low1..3 are made by the bench (run.DEMO_PREP)

SCRIPT = r"""set -e
F=__ROOT__ D=__DEMO__
mkdir -p "$F"/layers "$F"/b/upper "$F"/b/work "$F"/b/merged "$F"/vol/web1-data "$F"/vol/web2-data "$F"/vol/demo-data \
  "$F"/web1/upper "$F"/web1/work "$F"/web1/merged "$F"/web2/upper "$F"/web2/work "$F"/web2/merged \
  "$D"/upper "$D"/work "$D"/merged "$D"/shared /mnt/fl-shared
tar -x -C "$F"/layers -f -
L=$F/layers
mount -t overlay overlay -o lowerdir="$L"/site:"$L"/rootfs,upperdir="$F"/b/upper,workdir="$F"/b/work "$F"/b/merged
chroot "$F"/b/merged /bin/sh -c 'echo "welcome to the demo image" > /etc/motd && rm /bin/false'
umount "$F"/b/merged
for c in web1 web2; do
  mount -t overlay overlay -o lowerdir="$F"/b/upper:"$L"/site:"$L"/rootfs \
    -o upperdir="$F/$c"/upper,workdir="$F/$c"/work "$F/$c"/merged
done
mount -t overlay overlay -o lowerdir="$D"/low3:"$D"/low2:"$D"/low1,upperdir="$D"/upper,workdir="$D"/work "$D"/merged
mkdir -p "$F"/web1/merged/data "$F"/web1/merged/shared "$F"/web2/merged/data "$F"/web2/merged/shared \
  "$D"/merged/data "$D"/merged/shared "$D"/merged/scratch
for c in web1 web2; do
  mount --bind "$F"/vol/$c-data "$F/$c"/merged/data
  mount --bind -o ro "$D"/shared "$F/$c"/merged/shared
done
mount --bind "$F"/vol/demo-data "$D"/merged/data
mount --bind -o ro "$D"/shared "$D"/merged/shared
mount -t tmpfs -o size=16m tmpfs "$D"/merged/scratch
mount --bind -o ro "$D"/shared /mnt/fl-shared
echo ok
""".replace("__ROOT__", ROOT).replace("__DEMO__", DEMO)

MOUNTS = 11  # the mounts SCRIPT leaves on a host


def layers_tar(rootfs: Path, site: Path) -> bytes:
    """One uncompressed tar of the two shipped layers: rootfs/ (the demo's rootfs.tar) and
    site/srv/www/ (its site dir), the build context a `copy` step would ship."""
    out = io.BytesIO()
    with tarfile.open(rootfs) as src, tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for member in src.getmembers():
            data = src.extractfile(member) if member.isfile() else None
            member.name = f"rootfs/{member.name}"
            tf.addfile(member, data)
        for path in sorted(site.rglob("*")):
            tf.add(path, arcname=f"site/srv/www/{path.relative_to(site)}", recursive=False)
    return out.getvalue()


def prepare(workdir: Path, repo: Path, ssh_config: str) -> list[str]:
    """Write the layers' tar and run.sh into ``workdir``; return the argv of a run, to which the
    hosts' names are added. Its exit status is 1 unless every host said ok."""
    workdir.mkdir(parents=True, exist_ok=True)
    files = repo / "roles" / "demo" / "files"
    (workdir / "layers.tar").write_bytes(layers_tar(files / "rootfs.tar", files / "site"))
    run = (
        "# the demo's floor: one ssh connection per host, all at once\n"
        f'for h in "$@"; do\n'
        f'  ssh -F {shlex.quote(ssh_config)} "$h" {shlex.quote(SCRIPT)}'
        f' < {shlex.quote(str(workdir / "layers.tar"))} > {shlex.quote(str(workdir))}/out."$h" 2>&1 &\n'
        "done\nwait\n"
        'for h in "$@"; do [ "$(tail -n 1 ' + shlex.quote(str(workdir)) + '/out."$h")" = ok ] || exit 1; done\n'
    )
    (workdir / "run.sh").write_text(run)
    return ["sh", str(workdir / "run.sh")]
