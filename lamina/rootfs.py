"""A tiny root filesystem for trying lamina's images: Debian's static busybox, a few
applet links, passwd and group. `lamina lab rootfs OUT.tar` writes it."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
ROOTFS_MTIME = 1_700_000_000  # fixed mtime of every entry in busybox_rootfs()
APPLETS = (
    "cat", "chmod", "chown", "cp", "echo", "env", "false", "find", "grep", "head", "id", "ln", "ls",
    "mkdir", "mv", "rm", "sed", "sh", "sha256sum", "sleep", "stat", "tar", "test", "touch", "true",
    "wc",
)


def _is_static_elf(path: Path) -> bool:
    """True if ``path`` is an ELF executable without a program interpreter (statically linked)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF":
                return False
            is64 = head[4] == 2
            end = "<" if head[5] == 1 else ">"
            if is64:
                phoff = int.from_bytes(head[32:40], "little" if end == "<" else "big")
                phentsize = int.from_bytes(head[54:56], "little" if end == "<" else "big")
                phnum = int.from_bytes(head[56:58], "little" if end == "<" else "big")
            else:
                phoff = int.from_bytes(head[28:32], "little" if end == "<" else "big")
                phentsize = int.from_bytes(head[42:44], "little" if end == "<" else "big")
                phnum = int.from_bytes(head[44:46], "little" if end == "<" else "big")
            for i in range(phnum):
                f.seek(phoff + i * phentsize)
                p_type = int.from_bytes(f.read(4), "little" if end == "<" else "big")
                if p_type == 3:  # PT_INTERP
                    return False
            return True
    except OSError:
        return False


def busybox_rootfs(path: Path | str, busybox: Path | str = BUSYBOX) -> Path:
    """Write a small, deterministic rootfs tar (uncompressed) built on Debian's static busybox.

    Contents: /bin/busybox and relative symlinks to it for APPLETS (sh, ls, cat, ...), also
    /usr/bin/env; /etc/passwd and /etc/group with root (0) and app (1000); directories /etc,
    /home/app (owned 1000:1000, app's home), /root (0700), /tmp (1777), /usr/bin, /var.
    Entries sorted, mtime ROOTFS_MTIME, numeric owners (0:0 except /home/app), no user/group names.
    Returns ``path``.
    """
    path = Path(path)
    data = Path(busybox).read_bytes()
    if not _is_static_elf(Path(busybox)):
        raise RuntimeError(f"{busybox} is not a static executable: install busybox-static")
    files: dict[str, tuple] = {}  # name -> (type, mode, content-or-target, uid)
    for d, mode in [("bin", 0o755), ("etc", 0o755), ("home", 0o755), ("root", 0o700), ("tmp", 0o1777),
                    ("usr", 0o755), ("usr/bin", 0o755), ("var", 0o755)]:
        files[d] = ("dir", mode, None, 0)
    files["home/app"] = ("dir", 0o755, None, 1000)
    files["bin/busybox"] = ("file", 0o755, data, 0)
    for a in APPLETS:
        files[f"bin/{a}"] = ("symlink", 0o777, "busybox", 0)
    files["usr/bin/env"] = ("symlink", 0o777, "/bin/busybox", 0)
    files["etc/passwd"] = ("file", 0o644, b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n", 0)
    files["etc/group"] = ("file", 0o644, b"root:x:0:\napp:x:1000:\n", 0)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name in sorted(files):
            kind, mode, payload, uid = files[name]
            add_entry(tf, name, kind, mode, payload, uid)
    tmp.replace(path)
    return path


def add_entry(tf: tarfile.TarFile, name: str, kind: str, mode: int, payload, uid: int = 0,
              mtime: int = ROOTFS_MTIME) -> None:
    """One tar entry: kind "dir", "symlink" (payload: its target) or "file" (payload: bytes);
    numeric owner uid:uid, no user or group names."""
    ti = tarfile.TarInfo(name)
    ti.mode, ti.uid, ti.gid, ti.mtime = mode, uid, uid, mtime
    ti.uname = ti.gname = ""
    if kind == "dir":
        ti.type = tarfile.DIRTYPE
        tf.addfile(ti)
    elif kind == "symlink":
        ti.type, ti.linkname = tarfile.SYMTYPE, payload
        tf.addfile(ti)
    else:
        ti.size = len(payload)
        tf.addfile(ti, io.BytesIO(payload))
