"""A private Docker Engine for tests, plus helpers to compare file trees with what Docker makes.

lamina's tests compare lamina's results with the real Docker Engine (DESIGN.md §8). This module
gives them:

``ensure_docker_installed()``
    Installs Debian's ``docker.io`` and ``busybox-static`` with apt when ``dockerd`` or a static
    ``/bin/busybox`` is missing. Services are not started by the install (policy-rc.d), so no
    system dockerd appears and the host's firewall stays as it is.

``Dockerd(root)``
    A dockerd of our own: data root, exec root, unix socket, pid file and log all under ``root``
    (which must be on a real disk: overlay2 needs d_type and cannot sit on an overlay), run with
    ``--iptables=false --ip-forward=false --ip-masq=false --bridge=none`` so it changes neither
    the firewall nor the host's networking, and with its own containerd namespace, so it never
    meets another dockerd's containers. ``start()``, ``stop()``, ``docker(*args)``.

``busybox_rootfs(path)``
    A small deterministic rootfs tar built from Debian's static busybox, for ``docker import``.

``tar_manifest(tar)`` / ``diff_manifests(a, b)``
    What a tree looks like, read from a tar (``docker export``, ``docker save`` layers, or
    ``tar -C dir -c .``), and a readable list of differences between two such manifests.

No pytest import here: the module is usable from scripts too.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, NamedTuple

from lamina.rootfs import APPLETS, BUSYBOX, ROOTFS_MTIME, _is_static_elf, busybox_rootfs  # noqa: F401

DEFAULT_BASE = Path("/var/lib/lamina-test-docker")
APT_PACKAGES = ("docker.io", "busybox-static")

# Paths `docker export` adds to a container's tree that are not in its image: the container's
# "-init" layer (moby daemon/initlayer), measured with an image imported from busybox_rootfs():
# `docker create` + `docker export`, compared with the imported tar (Engine 20.10.24):
#   /.dockerenv                                  empty file, 0755
#   /dev (dir), /dev/console (empty file), /dev/pts, /dev/shm (dirs)     all 0755
#   /etc/hostname, /etc/hosts, /etc/resolv.conf  empty files, 0755 (bind-mounted when running)
#   /etc/mtab                                    symlink -> /proc/mounts
#   /proc, /sys                                  dirs, 0755
# The files (and /etc/mtab) replace whatever the image has there: an image's own /etc/hosts
# exports as the init layer's empty 0755 file; image directories at these paths are kept.
# A volume's mount point (`-v vol:/data`) also shows up, as an empty dir, but is
# not in this list: it belongs to the test that asked for it.
DOCKER_EXPORT_NOISE: tuple[str, ...] = (
    "/.dockerenv",
    "/dev",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/mtab",
    "/etc/resolv.conf",
    "/proc",
    "/sys",
)

CGROUP_PARENT = "/lamina-test-docker"


# --------------------------------------------------------------------------------------------
# installing


def _dockerd_path() -> str | None:
    return shutil.which("dockerd") or next(
        (p for p in ("/usr/sbin/dockerd", "/usr/bin/dockerd") if os.access(p, os.X_OK)), None
    )


def _cli_path() -> str | None:
    # Prefer Debian's CLI (same release as its dockerd, has the legacy builder built in) over
    # whatever `docker` comes first in PATH (this machine has a docker 28 CLI in /usr/local/bin).
    if os.access("/usr/bin/docker", os.X_OK):
        return "/usr/bin/docker"
    return shutil.which("docker")


def docker_missing() -> list[str]:
    """What ensure_docker_installed() would install ([] if nothing is missing)."""
    missing = []
    if not (_dockerd_path() and _cli_path() and shutil.which("containerd") and shutil.which("runc")):
        missing.append("docker.io")
    if not _is_static_elf(BUSYBOX):
        missing.append("busybox-static")
    return missing


def ensure_docker_installed(timeout: float = 900) -> list[str]:
    """Install Debian's docker.io and busybox-static if missing; return what was installed.

    Quiet and non-interactive. ``apt-get update`` runs only if the install fails without it.
    While apt runs, a policy-rc.d (if the machine has none) keeps dpkg from starting services,
    so the install starts no system dockerd/containerd. Raises RuntimeError on failure.
    """
    missing = docker_missing()
    if not missing:
        return []
    if os.geteuid() != 0:
        raise RuntimeError(f"need root to install {' '.join(missing)} (apt-get)")
    if not shutil.which("apt-get"):
        raise RuntimeError(f"{' '.join(missing)} missing and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "APT_LISTCHANGES_FRONTEND": "none"}
    install = [
        "apt-get", "install", "-y", "-q", "--no-install-recommends",
        "-o", "DPkg::Lock::Timeout=300", "-o", "Dpkg::Options::=--force-confdef",
        "-o", "Dpkg::Options::=--force-confold", *missing,
    ]

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)

    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\n# lamina tests: installing docker.io must not start services\nexit 101\n")
        policy.chmod(0o755)
        made_policy = True
    try:
        r = run(install)
        if r.returncode != 0:
            u = run(["apt-get", "update", "-q", "-o", "DPkg::Lock::Timeout=300"])
            if u.returncode != 0:
                raise RuntimeError(f"apt-get update failed:\n{_tail(u.stdout + u.stderr)}")
            r = run(install)
        if r.returncode != 0:
            raise RuntimeError(f"apt-get install {' '.join(missing)} failed:\n{_tail(r.stdout + r.stderr)}")
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)
    still = docker_missing()
    if still:
        raise RuntimeError(f"installed {' '.join(missing)} but still missing: {' '.join(still)}")
    return missing


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# the daemon


class DockerError(subprocess.CalledProcessError):
    """A docker CLI command failed; str() includes its stderr."""

    def __str__(self) -> str:
        err = self.stderr.decode(errors="replace") if isinstance(self.stderr, bytes) else (self.stderr or "")
        return f"{' '.join(map(str, self.cmd))} exited {self.returncode}:\n{_tail(err)}"


def _fstype(path: Path) -> str:
    """Filesystem type of the mount holding ``path`` (from /proc/self/mountinfo)."""
    path = path.resolve()
    best, fstype = "", "?"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mnt = left.split()[4].encode().decode("unicode_escape")
            if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, fstype = mnt, right.split()[0]
    return fstype


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].encode().decode("unicode_escape")
            if mnt.startswith(prefix):
                out.append(mnt)
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _procs_using(path: Path, name_prefix: str = "") -> list[int]:
    """Pids whose command line mentions ``path`` (and whose argv[0] basename starts so)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            argv = _cmdline(int(d.name))
            if argv and os.path.basename(argv[0]).startswith(name_prefix) and any(str(path) in a for a in argv):
                out.append(int(d.name))
    return out


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM ``pid``, wait up to ``timeout`` s, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def _remove_cgroup_parent() -> None:
    """Remove CGROUP_PARENT's empty cgroups (its own and left-over containers' ones).

    rmdir of a cgroup fails while processes are in it, so containers of a concurrent session
    are safe; a container killed with its shim leaves an empty cgroup that goes here.
    """
    tops = [*Path("/sys/fs/cgroup").glob("*" + CGROUP_PARENT), Path("/sys/fs/cgroup" + CGROUP_PARENT)]
    for top in tops:
        if not top.is_dir():
            continue
        for d, _, _ in sorted(os.walk(top), key=lambda w: len(w[0]), reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(d)


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    PR_SET_PDEATHSIG = 1
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Dockerd:
    """A private dockerd whose every file lives under ``root``.

    Layout: ``root/data`` (--data-root), ``root/exec`` (--exec-root), ``root/docker.sock``,
    ``root/docker.pid``, ``root/dockerd.log``, ``root/daemon.json`` (own config, so
    /etc/docker/daemon.json is not read), ``root/key.json`` (trust key, else dockerd 20.10 makes
    /etc/docker/key.json), ``root/cli`` (DOCKER_CONFIG for the CLI) and ``root/lock``: held
    (flock) while this object owns the root, so two test sessions never share one. What a killed
    run left on ``root`` (a dockerd, running containers, a stale pid file or socket) is cleared by
    ``start()``; dockerd's own recovery does the rest.

    dockerd supervises its own containerd (state under ``root/exec/containerd``) unless a system
    containerd listens on /run/containerd/containerd.sock; then it uses that one, in a containerd
    namespace named after ``root``, so sessions still do not meet.

    ``root`` may persist between runs (images stay, start is quick) or be a fresh temp dir.
    """

    def __init__(
        self,
        root: Path | str = DEFAULT_BASE / "default",
        *,
        dockerd: str | None = None,
        cli: str | None = None,
        storage_driver: str = "overlay2",
        start_timeout: float = 60,
        extra_args: Iterable[str] = (),
    ):
        self.root = Path(root)
        self.data_root = self.root / "data"
        self.exec_root = self.root / "exec"
        self.socket = self.root / "docker.sock"
        self.pidfile = self.root / "docker.pid"
        self.log_path = self.root / "dockerd.log"
        self.config_file = self.root / "daemon.json"
        self.cli_config = self.root / "cli"
        self.host = f"unix://{self.socket}"
        # containerd wants ^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$: no two separators in a row
        self.containerd_namespace = "lamina-test-" + (re.sub(r"[^A-Za-z0-9]+", "-", self.root.name).strip("-") or "x")
        self.dockerd_bin = dockerd or _dockerd_path() or "dockerd"
        self.cli = cli or _cli_path() or "docker"
        self.storage_driver = storage_driver
        self.start_timeout = start_timeout
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None  # how long the last start() took
        self.server_version: str | None = None
        self.installed: list[str] = []  # set by whoever ran ensure_docker_installed() (the fixture)
        self.install_seconds: float | None = None
        self._lock_fd: int | None = None
        self._log: IO[bytes] | None = None

    # ---- environment for the CLI

    @property
    def env(self) -> dict[str, str]:
        """Environment for docker CLI subprocesses: this daemon, legacy builder, no user config."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env.update(
            DOCKER_HOST=self.host,
            DOCKER_BUILDKIT="0",
            DOCKER_CONFIG=str(self.cli_config),
            DOCKER_CLI_HINTS="false",
        )
        return env

    def argv(self) -> list[str]:
        return [
            self.dockerd_bin,
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--host", self.host,
            "--pidfile", str(self.pidfile),
            "--config-file", str(self.config_file),
            "--storage-driver", self.storage_driver,
            # leave the host's firewall and networking alone
            "--iptables=false", "--ip-forward=false", "--ip-masq=false", "--bridge=none",
            "--userland-proxy=false",
            # never meet another dockerd's containers in a shared containerd
            "--containerd-namespace", self.containerd_namespace,
            "--containerd-plugins-namespace", self.containerd_namespace + "-plugins",
            # containers' cgroups under a parent of our own, not a system docker's /docker
            "--cgroup-parent", CGROUP_PARENT,
            *self.extra_args,
        ]

    # ---- lifecycle

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Dockerd:
        """Start dockerd and wait until ``docker info`` answers. Returns self."""
        if self.running():
            return self
        t0 = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        fstype = _fstype(self.root)
        if fstype in ("overlay", "tmpfs", "aufs", "ramfs"):
            raise RuntimeError(
                f"{self.root} is on {fstype}: the docker data root must be on a real disk "
                "(overlay2 needs d_type and cannot stack on an overlay); use e.g. /var/lib/lamina-test-docker"
            )
        self._acquire_lock()
        try:
            self._clear_stale()
            for d in (self.data_root, self.exec_root, self.cli_config):
                d.mkdir(parents=True, exist_ok=True)
            self.data_root.chmod(0o711)
            # own config: /etc/docker/daemon.json is not read, and the trust key (dockerd 20.10
            # makes /etc/docker/key.json otherwise) stays under root
            self.config_file.write_text(json.dumps({"deprecated-key-path": str(self.root / "key.json")}) + "\n")
            if self.log_path.exists():
                self.log_path.replace(self.log_path.with_suffix(".log.1"))
            self._log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's ^C goes to pytest, which stops us in order
                preexec_fn=_set_pdeathsig,  # if the test process dies, dockerd shuts down too
            )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _acquire_lock(self) -> None:
        if self._lock_fd is not None:
            return
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            raise RuntimeError(f"{self.root} is in use by another test session (pid {owner or '?'})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _clear_stale(self) -> None:
        """Before start (lock held): clear what a killed run left on this root.

        Kills containers still running (their shims outlive dockerd and containerd; else the
        new dockerd's recovery, or the old one's shutdown, waits 10 s per container before it
        kills them), stops a dockerd whose owner died, drops stale pid files and the socket.
        Shims, mounts and container records are then cleaned up by the next dockerd.
        """
        for shim in _procs_using(self.exec_root, name_prefix="containerd-shim"):
            for child in _children(shim):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pidfile.read_text().split()[0])
            if _pid_alive(pid) and any(str(self.data_root) in a for a in _cmdline(pid)):
                _terminate(pid, 30)
        # dockerd adopts a containerd its pid file names if that pid exists, even as a zombie (this
        # machine's init reaps slowly) or as an unrelated process reusing the pid: then it waits
        # for a socket nobody serves and fails. Keep the pid file only for a live containerd of ours.
        cpidfile = self.exec_root / "containerd" / "containerd.pid"
        with contextlib.suppress(OSError, ValueError):
            cpid = int(cpidfile.read_text().split()[0])
            if not (_pid_alive(cpid) and any(str(self.exec_root) in a for a in _cmdline(cpid))):
                cpidfile.unlink()
        # dockerd refuses to start over a pid file naming a live process (any process), and
        # cannot listen on a left-over socket file
        self.pidfile.unlink(missing_ok=True)
        self.socket.unlink(missing_ok=True)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"dockerd exited with {self.proc.returncode} while starting; log {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            if self.socket.exists():
                try:  # the API hangs while dockerd recovers containers of a killed run
                    r = self.docker("version", "--format", "{{.Server.Version}}", check=False, timeout=5)
                except subprocess.TimeoutExpired:
                    r = None
                if r is not None and r.returncode == 0:
                    self.server_version = r.stdout.strip()
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"dockerd did not answer within {self.start_timeout:.0f}s; log {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.1)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return _tail(self.log_path.read_text(errors="replace"), lines)
        except OSError:
            return "(no log)"

    def remove_containers(self) -> None:
        """Remove every container (running or not) of this daemon, with anonymous volumes."""
        if not self.running():
            return
        r = self.docker("ps", "-aq", check=False, timeout=60)
        ids = r.stdout.split() if r.returncode == 0 else []
        if ids:
            self.docker("rm", "-fv", *ids, check=False, timeout=300)

    def stop(self, timeout: float = 30) -> None:
        """Remove all containers, stop dockerd (SIGTERM, then SIGKILL). Idempotent."""
        try:
            if self.proc is not None:
                if self.proc.poll() is None:
                    with contextlib.suppress(Exception):
                        self.remove_containers()
                    _terminate(self.proc.pid, timeout)
                with contextlib.suppress(Exception):
                    self.proc.wait(5)
                self.proc = None
                self._clear_leftovers()
                _remove_cgroup_parent()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
            self._release_lock()

    def _clear_leftovers(self) -> None:
        """With dockerd down: end our containerd, shims and containers; unmount what is left.

        After a clean shutdown there is nothing to do. After dockerd was killed, its containerd
        or shims (with their containers) may live on, and mounts stay: the data root's bind
        mount of itself (dockerd makes it shared), overlay rootfs, network namespaces.
        """
        for pid in _procs_using(self.exec_root, name_prefix="containerd"):
            for child in _children(pid):  # a shim's container init
                if not os.path.basename((_cmdline(child) or [""])[0]).startswith("containerd"):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGKILL)
            _terminate(pid, 10)
        for m in sorted(_mounts_under(self.root), key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)

    def destroy(self) -> None:
        """stop() and delete root (data, images, log and all)."""
        self.stop()
        left = _mounts_under(self.root)
        if left:
            raise RuntimeError(f"cannot remove {self.root}: still mounted: {left[:5]}")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Dockerd:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- the CLI

    def docker(
        self,
        *args: str | os.PathLike,
        input: bytes | str | None = None,
        check: bool = True,
        text: bool | None = None,
        timeout: float = 600,
        cwd: str | os.PathLike | None = None,
    ) -> subprocess.CompletedProcess:
        """Run ``docker -H unix://<our socket> *args`` with DOCKER_BUILDKIT=0.

        Output is text unless ``text=False`` or ``input`` is bytes. With ``check`` a failure
        raises DockerError (a CalledProcessError whose message includes stderr).
        """
        if text is None:
            text = not isinstance(input, bytes)
        argv = [self.cli, "-H", self.host, *map(str, args)]
        r = subprocess.run(
            argv, input=input, capture_output=True, text=text, env=self.env, timeout=timeout, cwd=cwd,
            stdin=subprocess.DEVNULL if input is None else None,
        )
        if check and r.returncode != 0:
            raise DockerError(r.returncode, argv, r.stdout, r.stderr)
        return r

    def info(self) -> dict:
        return json.loads(self.docker("info", "--format", "{{json .}}").stdout)

    def import_image(self, tar: Path | str, ref: str) -> str:
        """``docker import`` a rootfs tar as image ``ref``; returns the image id."""
        return self.docker("import", str(tar), ref).stdout.strip()

    def diff(self, container: str) -> dict[str, str]:
        """``docker diff container`` as {path: "A" | "C" | "D"} (added, changed, deleted)."""
        return parse_docker_diff(self.docker("diff", container).stdout)

    def export_manifest(self, container: str) -> dict[str, Entry]:
        """tar_manifest() of ``docker export container``."""
        r = self.docker("export", container, text=False)
        return tar_manifest(io.BytesIO(r.stdout))


def parse_docker_diff(text: str) -> dict[str, str]:
    """Parse ``docker diff`` output ("C /etc", "A /x", "D /bin/true") -> {path: kind}."""
    out = {}
    for line in text.splitlines():
        if line.strip():
            kind, _, path = line.partition(" ")
            if kind not in ("A", "C", "D") or not path.startswith("/"):
                raise ValueError(f"unexpected docker diff line: {line!r}")
            out[path] = kind
    return out


def sweep_stale_roots(base: Path | str = DEFAULT_BASE, prefix: str = "s-") -> list[Path]:
    """Remove ``base/<prefix>*`` roots left by killed test sessions (their lock is free).

    Roots in use by a live session (lock held) are left alone. Returns what was removed.
    """
    removed = []
    base = Path(base)
    if not base.is_dir():
        return removed
    for root in sorted(base.glob(f"{prefix}*")):
        lock = root / "lock"
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            # not started yet (another session may have just made it), or never started
            try:
                if time.time() - root.stat().st_mtime < 3600:
                    continue
            except OSError:
                continue
            fd = None
        except OSError:
            continue
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
            d = Dockerd(root)
            d._clear_stale()  # a dockerd left running (its owner was killed): stop it
            d._clear_leftovers()
            if not _mounts_under(root):
                shutil.rmtree(root, ignore_errors=True)
                removed.append(root)
        finally:
            if fd is not None:
                os.close(fd)
    if removed:
        _remove_cgroup_parent()
    return removed


# --------------------------------------------------------------------------------------------
# a rootfs



# --------------------------------------------------------------------------------------------
# comparing trees


class Entry(NamedTuple):
    """One path of a tar_manifest().

    Compared: type ("file", "dir", "symlink", "char", "block", "fifo"), mode (permission bits
    incl. suid/sgid/sticky: ``st_mode & 0o7777``), numeric uid and gid, link (a symlink's target,
    else ""), sha256 (of a regular file's content, else ""), dev ((major, minor) of a device,
    else None).

    Ignored, and why: mtime/atime/ctime (builds, copy-up and export set them; Docker does not
    promise them), user/group names (written from whichever passwd the tar writer looked at;
    the numeric ids are what the filesystem holds), xattrs and other PAX records (the overlay's
    own trusted.*/user.* attributes and capabilities differ by writer; compare them separately if
    a test needs them), size (implied by sha256), and hard links as such: ``docker export`` may
    write a second name of an inode as a hardlink entry or as a full file, so a hardlink entry
    reads as a regular file with its target's metadata and content hash.
    """

    type: str
    mode: int
    uid: int
    gid: int
    link: str = ""
    sha256: str = ""
    dev: tuple[int, int] | None = None

    def __str__(self) -> str:
        s = f"{self.type} {self.mode:04o} {self.uid}:{self.gid}"
        if self.link:
            s += f" -> {self.link}"
        if self.sha256:
            s += f" sha256:{self.sha256[:12]}"
        if self.dev is not None:
            s += f" dev {self.dev[0]},{self.dev[1]}"
        return s


_TYPES = {
    tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo",
}


def norm_path(name: str) -> str:
    """Tar member name -> "/a/b" (no "./", no trailing slash; "/" for the root)."""
    p = posixpath.normpath("/" + name.lstrip("/"))
    return "/" if p in ("/", "//", "/.") else p


def tar_manifest(src: Path | str | bytes | IO[bytes]) -> dict[str, Entry]:
    """Read a tar (path, bytes or binary file object; compressed is fine) -> {path: Entry}.

    Paths are normalised with norm_path(). A later entry for the same path replaces an earlier
    one (tar semantics). See Entry for which fields are kept and which are ignored.
    """
    if isinstance(src, bytes | bytearray):
        src = io.BytesIO(src)
    if isinstance(src, str | os.PathLike):
        with open(src, "rb") as f:
            return tar_manifest(f)
    out: dict[str, Entry] = {}
    with tarfile.open(fileobj=src, mode="r|*") as tf:
        for ti in tf:
            name = norm_path(ti.name)
            if ti.type == tarfile.LNKTYPE:
                target = out.get(norm_path(ti.linkname))
                if target is None:  # link to something not (yet) in the archive
                    out[name] = Entry("file", ti.mode & 0o7777, ti.uid, ti.gid, "", "?" + norm_path(ti.linkname))
                else:
                    out[name] = target
                continue
            kind = _TYPES.get(ti.type, f"type-{ti.type!r}")
            sha = ""
            if kind == "file":
                h = hashlib.sha256()
                fo = tf.extractfile(ti)
                if fo is not None:
                    for chunk in iter(lambda: fo.read(1 << 20), b""):  # noqa: B023
                        h.update(chunk)
                sha = h.hexdigest()
            dev = (ti.devmajor, ti.devminor) if kind in ("char", "block") else None
            link = ti.linkname if kind == "symlink" else ""
            out[name] = Entry(kind, ti.mode & 0o7777, ti.uid, ti.gid, link, sha, dev)
    return out


def dir_manifest(root: Path | str) -> dict[str, Entry]:
    """tar_manifest() of a directory tree on this machine (via GNU tar, numeric owners)."""
    r = subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", "-", "."], capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"tar of {root} failed: {r.stderr.decode(errors='replace')}")
    return tar_manifest(io.BytesIO(r.stdout))


def _ignored(path: str, ignore: Iterable[str]) -> bool:
    for p in ignore:
        p = "/" + p.strip("/") if p.strip("/") else "/"
        if p == "/" or path == p or path.startswith(p + "/"):
            return True
    return False


def diff_manifests(
    a: dict[str, Entry], b: dict[str, Entry], ignore: Iterable[str] = (), labels: tuple[str, str] = ("a", "b")
) -> list[str]:
    """Differences between two manifests, one readable line each, sorted by path ([] if equal).

    ``ignore``: path prefixes to skip ("/dev" skips /dev and everything below it, not /devices).
    """
    ignore = tuple(ignore)
    la, lb = labels
    out = []
    for path in sorted(set(a) | set(b)):
        if _ignored(path, ignore):
            continue
        ea, eb = a.get(path), b.get(path)
        if eb is None:
            out.append(f"{path}: only in {la} ({ea})")
        elif ea is None:
            out.append(f"{path}: only in {lb} ({eb})")
        elif ea != eb:
            diffs = []
            for field in Entry._fields:
                va, vb = getattr(ea, field), getattr(eb, field)
                if va != vb:
                    if field == "mode":
                        va, vb = f"{va:04o}", f"{vb:04o}"
                    elif field == "sha256":
                        va, vb = va[:12], vb[:12]
                    diffs.append(f"{field} {va} ({la}) != {vb} ({lb})")
            out.append(f"{path}: " + ", ".join(diffs))
    return out
