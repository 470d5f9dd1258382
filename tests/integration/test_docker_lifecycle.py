"""Container lifecycle against the real Docker Engine: the same change scripts run in a
Docker container and in a lamina container of the same image; `lamina diff` must equal
`docker diff`, line for line and in order."""

from __future__ import annotations

import shlex
import textwrap
from pathlib import Path

import pytest
from test_engine import CLEAN, changes, lamina

from lamina.rootfs import busybox_rootfs

SCRIPTS = {
    "create": "echo new > /newfile",
    "modify": "echo more >> /etc/passwd",
    "delete": "rm /etc/group",
    "opaque": "rm -rf /home/app && mkdir /home/app && echo n > /home/app/n",
    "chmod": "chmod 600 /etc/passwd",
    "chown": "chown 1000:1000 /etc/group",
    "symlink": "ln -s /etc/passwd /pw",
    "hardlink": "ln /etc/passwd /etc/passwd2",
    "rename": "mv /etc/group /etc/group.old",
    "nested": "mkdir -p /a/b/c && echo x > /a/b/c/f",
    "file2dir": "rm /etc/passwd && mkdir /etc/passwd",
    "dir2file": "rm -rf /home && echo f > /home",
    "rmdir": "rm -rf /root",
    "touch": "touch /etc/passwd",
    "deep": "echo x > /home/app/.profile",
    "applet": "rm /bin/cat",
}


@pytest.fixture(scope="module")
def base(tmp_path_factory, dockerd) -> Path:
    ctx = tmp_path_factory.mktemp("lifecycle")
    busybox_rootfs(ctx / "rootfs.tar")
    dockerd.import_image(ctx / "rootfs.tar", "lamina-lifecycle-base")
    return ctx


@pytest.fixture(scope="module")
def docker_diffs(dockerd, base) -> dict[str, list[str]]:
    out = {}
    for name, script in SCRIPTS.items():
        dockerd.docker("run", "--name", f"lc-{name}", "--network", "none", "lamina-lifecycle-base", "/bin/sh", "-c",
                       script)
        out[name] = dockerd.docker("diff", f"lc-{name}").stdout.splitlines()
    return out


@pytest.fixture(scope="module")
def lamina_containers(lab, base) -> tuple[str, Path]:
    h = lab.hosts[2]
    assert lab.run(h, CLEAN).returncode == 0
    spec = base / "lifecycle.yml"
    body = "".join(f"  lc-{name}: {{image: base}}\n" for name in SCRIPTS)
    spec.write_text(f"images:\n  base: {{steps: [{{add: {{src: rootfs.tar}}}}]}}\ncontainers:\n{body}")
    report = changes(lab, "--limit", h, spec=spec)
    assert not report[h]["failed"], report
    for name, script in SCRIPTS.items():
        merged = f"/var/lib/lamina/containers/lc-{name}/merged"
        r = lab.run(h, f"chroot {merged} /bin/sh -c {shlex.quote(script)}")
        assert r.returncode == 0, r.stderr
    return h, spec


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_lamina_diff_equals_docker_diff(lab, name, docker_diffs, lamina_containers):
    h, spec = lamina_containers
    ours = lamina("diff", "-i", str(lab.inventory), f"lc-{name}", str(spec), "--host", h).stdout.splitlines()
    assert ours == docker_diffs[name], textwrap.dedent(f"""
        script: {SCRIPTS[name]}
        docker: {docker_diffs[name]}
        lamina: {ours}""")
