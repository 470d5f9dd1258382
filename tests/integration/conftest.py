"""Integration tests: real SSH test hosts on this machine (``lamina lab``), as root.

Everything under tests/integration is marked ``integration`` (select with ``-m integration``).
The session-scoped ``lab`` fixture starts the test suite's own lab (dir /run/lamina/testlab,
hosts tlab1..tlab3 on 10.231.0.0/24), separate from a user's demo lab, and takes it down at the
end. It sets LAMINA_LAB_DIR/PREFIX/NET (and PYTHONPATH to this checkout) in os.environ for the
session, so ``lamina``, ``pyinfra <lab.inventory>`` and testinfra subprocesses use the test lab.

A test that takes the lab down or restarts it must leave it up again (``lamina.lab.up()``):
other test modules share it. Restarting gives new keys, so re-read files, don't cache keys.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# A mixed fleet: two hosts of this machine's userland (Debian bookworm: util-linux 2.38, OpenSSH
# 9.2) and one of Debian trixie (util-linux 2.41 and the new mount API, OpenSSH 10, no python3),
# so that every integration test runs on both.
FLEET = "bookworm:2,trixie:1"
N_HOSTS = 3
TEST_LAB_ENV = {
    "LAMINA_LAB_DIR": "/run/lamina/testlab",
    "LAMINA_LAB_PREFIX": "tlab",
    "LAMINA_LAB_NET": "10.231.0",
    "LAMINA_LAB_HOSTS": FLEET,
}


def pytest_collection_modifyitems(config, items):
    # this hook sees the whole session's items: mark only ours
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


@dataclass
class Lab:
    """What the ``lab`` fixture yields."""

    hosts: list[str]
    inventory: Path
    ssh_config: Path
    addresses: dict[str, str] = field(default_factory=dict)

    def ssh_argv(self, host: str, cmd: str) -> list[str]:
        return ["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", host, cmd]

    def run(self, host: str, cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run shell command ``cmd`` on ``host`` over real ssh; text output, no check."""
        return subprocess.run(
            self.ssh_argv(host, cmd),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def exec_requests(self, host: str, since: int = 0) -> list[str]:
        """Session requests (one per exec/subsystem/shell) ``host`` served, after ``since``."""
        from lamina import lab

        return lab.exec_requests(host, since)

    def mark(self, host: str) -> int:
        """Pass to ``exec_requests(host, since=...)`` to count only later requests."""
        from lamina import lab

        return lab.mark(host)


def _machine_problem() -> str | None:
    if os.geteuid() != 0:
        return "integration tests need root (network namespaces, mounts): run pytest as root"
    if not (shutil.which("sshd") or os.path.exists("/usr/sbin/sshd")):
        return (
            "integration tests need sshd: "
            "install openssh-server (apt-get install -y openssh-server)"
        )
    if not shutil.which("ssh"):
        return "integration tests need ssh: install openssh-client"
    return None


def _restore_env(saved: dict[str, str | None]) -> None:
    """Put environment variables back as they were (None: unset)."""
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def lab():
    # Fail, never skip: a missing prerequisite must not look like a green run.
    problem = _machine_problem()
    if problem:
        pytest.fail(problem, pytrace=False)

    saved = {k: os.environ.get(k) for k in [*TEST_LAB_ENV, "PYTHONPATH"]}
    os.environ.update(TEST_LAB_ENV)
    # subprocesses (pyinfra loading inventories/lab.py, lamina) import this checkout's lamina
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), saved["PYTHONPATH"]]))

    from lamina import lab as labmod

    try:
        try:
            started = labmod.up()  # the FLEET; also clears leftovers of an earlier, aborted session
        except labmod.LabError as e:
            pytest.fail(f"cannot start the test lab: {e}", pytrace=False)
        yield Lab(
            hosts=[h.name for h in started],
            inventory=REPO / "inventories" / "lab.py",
            ssh_config=labmod.ssh_config(),
            addresses={h.name: h.address for h in started},
        )
    finally:
        try:
            labmod.down()
        finally:
            _restore_env(saved)


# --------------------------------------------------------------------------------------------
# Docker Engine as a reference (DESIGN.md §8): a private dockerd for the session.


@pytest.fixture(scope="session")
def dockerd():
    """A private Docker Engine (tests/dockerlib.py ``Dockerd``) for the whole session.

    Installs Debian's docker.io and busybox-static if missing, starts dockerd on a fresh data root
    under /var/lib/lamina-test-docker (real disk; removed at the end, as are roots left by killed
    sessions), with no firewall/bridge changes. Fails, never skips, if Docker cannot start here.
    """
    import sys
    import tempfile
    import time

    if str(HERE.parent) not in sys.path:  # tests/, for ``import dockerlib`` (as test modules do)
        sys.path.append(str(HERE.parent))
    import dockerlib

    if os.geteuid() != 0:
        pytest.fail("the dockerd fixture needs root: run pytest as root", pytrace=False)
    t0 = time.monotonic()
    try:
        installed = dockerlib.ensure_docker_installed()
    except RuntimeError as e:
        pytest.fail(f"cannot install Docker: {e}", pytrace=False)
    install_seconds = time.monotonic() - t0

    dockerlib.DEFAULT_BASE.mkdir(parents=True, exist_ok=True)
    dockerlib.sweep_stale_roots(dockerlib.DEFAULT_BASE)
    root = Path(tempfile.mkdtemp(prefix="s-", dir=dockerlib.DEFAULT_BASE))
    daemon = dockerlib.Dockerd(root)
    daemon.installed, daemon.install_seconds = installed, install_seconds
    try:
        try:
            daemon.start()
        except RuntimeError as e:
            pytest.fail(f"cannot start dockerd: {e}", pytrace=False)
        yield daemon
    finally:
        daemon.destroy()


@pytest.fixture(scope="session")
def demo_rootfs() -> Path:
    """roles/demo/files/rootfs.tar, the demo's base image (made as `lamina lab rootfs` does)."""
    from lamina.rootfs import busybox_rootfs

    path = REPO / "roles" / "demo" / "files" / "rootfs.tar"
    try:
        return busybox_rootfs(path)
    except RuntimeError as e:
        pytest.fail(f"cannot make the demo's rootfs: {e}", pytrace=False)


# --------------------------------------------------------------------------------------------
# A lab of its own with systemd as PID 1 and persistent disks, for `lamina lab reboot`.

SYSTEMD_LAB_ENV = {
    "LAMINA_LAB_DIR": "/run/lamina/rebootlab",
    "LAMINA_LAB_PREFIX": "rb",
    "LAMINA_LAB_NET": "10.233.0",
}


@dataclass
class SystemdLab(Lab):
    """What the ``systemd_lab`` fixture yields: a ``Lab`` whose lamina.lab calls must run inside
    ``with systemd_lab.active():`` (its LAMINA_LAB_* environment; the session's ``lab`` keeps
    os.environ otherwise). ``run``/``ssh_argv`` need no such block: they name its ssh_config."""

    env: dict[str, str] = field(default_factory=dict)

    def active(self):
        import contextlib

        @contextlib.contextmanager
        def patched():
            saved = {k: os.environ.get(k) for k in self.env}
            os.environ.update(self.env)
            try:
                yield
            finally:
                _restore_env(saved)

        return patched()

    def exec_requests(self, host: str, since: int = 0) -> list[str]:
        with self.active():
            return super().exec_requests(host, since)

    def mark(self, host: str) -> int:
        with self.active():
            return super().mark(host)

    def reboot(self, host: str):
        """``lamina.lab.reboot(host)``: the host's new ``LabHost``."""
        from lamina import lab

        with self.active():
            return lab.reboot(host)


def _own_lab(env: dict[str, str], what: str, **up):
    """A lab of its own (its LAMINA_LAB_* `env`), started with lamina.lab.up(**up), yielded as a
    SystemdLab and taken down after."""
    problem = _machine_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    from lamina import lab as labmod

    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    slab = SystemdLab(hosts=[], inventory=REPO / "inventories" / "lab.py", ssh_config=Path(), env=env)
    try:
        with slab.active():  # not around the yield: os.environ stays the session's meanwhile
            try:
                started = labmod.up(**up)
            except labmod.LabError as e:
                pytest.fail(f"cannot start the {what} test lab: {e}", pytrace=False)
            slab.hosts = [h.name for h in started]
            slab.ssh_config = labmod.ssh_config()
            slab.addresses = {h.name: h.address for h in started}
        yield slab
    finally:
        with slab.active():
            labmod.down()


@pytest.fixture(scope="module")
def systemd_lab():
    """Two hosts rb1, rb2 (10.233.0.11-12, dir /run/lamina/rebootlab) with systemd as PID 1 and
    persistent disks, for the module that asks for it; taken down at its end. Separate from the
    session's ``lab``: rebooting or downing it disturbs no other test."""
    yield from _own_lab(SYSTEMD_LAB_ENV, "systemd", init="systemd", disks="persistent",
                        userlands=["bookworm", "trixie"])


@pytest.fixture(scope="module")
def sysv_lab():
    """One host rbs1 (10.233.2.11, dir /run/lamina/rebootlab-s) without systemd (sshd is PID 1,
    the host's /etc/rc.local runs at boot, as on a SysV host) and with persistent disks."""
    yield from _own_lab({"LAMINA_LAB_DIR": "/run/lamina/rebootlab-s", "LAMINA_LAB_PREFIX": "rbs",
                         "LAMINA_LAB_NET": "10.233.2"}, "rc.local", n=1, init="sshd", disks="persistent")
