"""Container lifecycle against the real Docker Engine: the same change scripts run in a
Docker container and in a lamina container of the same image; `lamina diff` must equal
`docker diff`, line for line and in order."""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import tarfile
import textwrap
from pathlib import Path

import pytest
from dockerlib import DOCKER_EXPORT_NOISE, diff_manifests, dir_manifest, tar_manifest
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


def volume_manifest(lab, host: str, name: str) -> dict:
    out = subprocess.run(lab.ssh_argv(host, f"tar -C /var/lib/lamina/volumes/{name}/_data --numeric-owner -cf - ."),
                         capture_output=True, timeout=60, check=True)
    manifest = tar_manifest(io.BytesIO(out.stdout))
    manifest.pop("/", None)
    return manifest


def test_volume_copy_up_and_nocopy_match_docker(lab, dockerd, base, tmp_path):
    """An empty volume over a non-empty image dir gets its content (both engines); nocopy and
    binds stay empty; the content is copied once — later image dirs don't overwrite it."""
    host_dir = tmp_path / "bind"
    host_dir.mkdir()
    dockerd.docker("run", "--rm", "--network", "none", "-v", "lc-copy:/etc", "-v", "lc-nocopy:/root:nocopy",
                   "-v", f"{host_dir}:/home", "lamina-lifecycle-base", "true")
    root = Path(dockerd.docker("volume", "inspect", "-f", "{{.Mountpoint}}", "lc-copy").stdout.strip())
    docker_copy = dir_manifest(root)
    docker_copy.pop("/", None)
    docker_nocopy = dir_manifest(Path(dockerd.docker("volume", "inspect", "-f", "{{.Mountpoint}}",
                                                     "lc-nocopy").stdout.strip()))
    docker_nocopy.pop("/", None)
    assert docker_copy and "/passwd" in docker_copy and docker_nocopy == {} and list(host_dir.iterdir()) == []

    h = lab.hosts[1]
    assert lab.run(h, CLEAN).returncode == 0
    spec = base / "volumes.yml"
    spec.write_text(textwrap.dedent("""\
        images:
          base: {steps: [{add: {src: rootfs.tar}}]}
        containers:
          vols:
            image: base
            mounts:
              - lc-copy:/etc
              - {type: volume, source: lc-nocopy, target: /root, volume: {nocopy: true}}
              - /srv/bind:/home
        """))
    report = changes(lab, "--limit", h, spec=spec)
    assert not report[h]["failed"], report
    # Docker's init layer puts these into every container's /etc (DOCKER_EXPORT_NOISE), so into the copy too
    init_layer = [n.removeprefix("/etc") for n in DOCKER_EXPORT_NOISE if n.startswith("/etc/")]
    assert diff_manifests(docker_copy, volume_manifest(lab, h, "lc-copy"), ignore=init_layer,
                          labels=("docker", "lamina")) == []
    assert volume_manifest(lab, h, "lc-nocopy") == {}
    assert lab.run(h, "ls -A /srv/bind").stdout == ""
    # once: a volume that has content is never copied into again
    lab.run(h, "rm /var/lib/lamina/volumes/lc-copy/_data/passwd && umount /var/lib/lamina/containers/vols/merged/etc")
    changes(lab, "--limit", h, spec=spec)
    assert "/passwd" not in volume_manifest(lab, h, "lc-copy")


def archive_layer(path: Path, index: int = -1) -> dict:
    """tar_manifest of one layer of a docker-save (or lamina) archive, by manifest.json."""
    with tarfile.open(path) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))
        layer = tf.extractfile(manifest[0]["Layers"][index]).read()
    return tar_manifest(io.BytesIO(layer))


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_lamina_commit_equals_docker_commit(lab, dockerd, name, docker_diffs, lamina_containers, tmp_path,
                                            monkeypatch):
    h, spec = lamina_containers
    monkeypatch.setenv("LAMINA_IMAGES", str(tmp_path / "images"))
    dockerd.docker("commit", f"lc-{name}", f"lc-committed-{name}")
    dockerd.docker("save", "-o", str(tmp_path / "docker.tar"), f"lc-committed-{name}")
    out = json.loads(lamina("commit", "-i", str(lab.inventory), f"lc-{name}", f"committed-{name}", str(spec),
                            "--host", h).stdout)
    theirs, ours = archive_layer(tmp_path / "docker.tar"), archive_layer(Path(out["Archive"]))
    assert diff_manifests(theirs, ours, labels=("docker", "lamina")) == [], SCRIPTS[name]
    # the same content gives the same digest
    again = json.loads(lamina("commit", "-i", str(lab.inventory), f"lc-{name}", f"again-{name}", str(spec),
                              "--host", h).stdout)
    assert again["Layer"] == out["Layer"]
