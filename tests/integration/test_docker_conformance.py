"""lamina against the real Docker Engine: for the same image, a lamina container's merged
tree equals `docker export` of a Docker container of that image — paths, types, modes,
owners, symlink targets, content hashes (dockerlib.tar_manifest)."""

from __future__ import annotations

import io
import subprocess
import tarfile
import textwrap
from pathlib import Path

import pytest
from dockerlib import DOCKER_EXPORT_NOISE, diff_manifests, tar_manifest
from test_engine import CLEAN, changes, lamina

from lamina.rootfs import busybox_rootfs

# Every kind of change a step can make: new dirs and files, a symlink, a chmod and a
# chown, a deleted lower file (whiteout), a lower dir deleted and made again (opaque).
RUN = ("mkdir -p /x/y && echo hi > /x/y/f && ln -s /x/y/f /x/link && rm /bin/true"
       " && chmod 0600 /etc/group && chown 1000:1000 /x/y/f"
       " && rm -rf /home/app && mkdir /home/app && echo new > /home/app/n && touch /etc/passwd")


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Path:
    """A build context usable by both: rootfs, a directory to COPY, an archive to ADD."""
    ctx = tmp_path_factory.mktemp("ctx")
    busybox_rootfs(ctx / "rootfs.tar")
    app = ctx / "app"
    (app / "static").mkdir(parents=True)
    (app / "index.html").write_text("<h1>conformance</h1>\n")
    (app / "run.sh").write_text("#!/bin/sh\necho run\n")
    (app / "run.sh").chmod(0o755)
    (app / "static" / "style.css").write_text("body {}\n")
    with tarfile.open(ctx / "bundle.tar.gz", "w:gz") as tf:
        for name, data, mode, uid in (("bundle/readme", b"added\n", 0o640, 1000), ("bundle/bin/tool", b"#!x\n", 0o4755, 0)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), mode, uid, uid
            tf.addfile(info, io.BytesIO(data))
    (ctx / "Dockerfile").write_text(textwrap.dedent(f"""\
        FROM lamina-conformance-base
        COPY app /srv/app/
        ADD bundle.tar.gz /opt/
        RUN {RUN}
        """))
    return ctx


@pytest.fixture(scope="module")
def docker_image(dockerd, context) -> dict:
    """The image built by Docker, its `docker export` manifest, and its `docker save` archive."""
    dockerd.import_image(context / "rootfs.tar", "lamina-conformance-base")
    dockerd.docker("build", "-q", "-t", "lamina-conformance", str(context))
    dockerd.docker("create", "--name", "conformance", "lamina-conformance", "/bin/sh")
    dockerd.docker("save", "-o", str(context / "saved.tar"), "lamina-conformance")
    return {"export": dockerd.export_manifest("conformance"), "save": context / "saved.tar"}


def merged_manifest(lab, host: str, path: str) -> dict:
    """tar_manifest of a tree on a test host, streamed back over ssh."""
    out = subprocess.run(lab.ssh_argv(host, f"tar -C {path} --numeric-owner -cf - ."),
                         capture_output=True, timeout=120, check=True)
    return tar_manifest(io.BytesIO(out.stdout))


def compare(lab, host, container: str, docker_export: dict) -> list[str]:
    ours = merged_manifest(lab, host, f"/var/lib/lamina/containers/{container}/merged")
    ours.pop("/")  # docker export writes no entry for the root itself
    return diff_manifests(docker_export, ours, ignore=DOCKER_EXPORT_NOISE, labels=("docker", "lamina"))


def test_built_image_equals_docker_build(lab, context, docker_image):
    h = lab.hosts[0]
    assert lab.run(h, CLEAN).returncode == 0
    spec = context / "built.yml"
    spec.write_text(textwrap.dedent(f"""\
        images:
          base: {{steps: [{{add: {{src: rootfs.tar}}}}]}}
          app:
            from: base
            steps:
              - copy: {{src: app, dest: /srv/app/}}
              - add: {{src: bundle.tar.gz, dest: /opt/}}
              - run: "{RUN}"
        containers:
          conformance: {{image: app}}
        """))
    report = changes(lab, "--limit", h, spec=spec)
    assert not report[h]["failed"], report
    problems = compare(lab, h, "conformance", docker_image["export"])
    assert problems == [], "\n".join(problems)


def test_docker_save_archive_equals_docker_container(lab, context, docker_image):
    h = lab.hosts[1]
    assert lab.run(h, CLEAN).returncode == 0
    spec = context / "saved.yml"
    spec.write_text("images:\n  saved: {from: 'docker-archive:saved.tar'}\ncontainers:\n  fromsave: {image: saved}\n")
    report = changes(lab, "--limit", h, spec=spec)
    assert not report[h]["failed"], report
    problems = compare(lab, h, "fromsave", docker_image["export"])
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_exported_image_loads_into_docker_and_matches(lab, dockerd, context, docker_image, tmp_path, fmt):
    """Round trip: lamina builds the image (test_built_image_equals_docker_build), exports it,
    Docker loads it, and a Docker container of it shows the same tree as Docker's own build."""
    h = lab.hosts[0]
    spec = context / "built.yml"
    assert spec.exists(), "needs test_built_image_equals_docker_build first"
    archive = tmp_path / f"app-{fmt}.tar"
    lamina("export", "-i", str(lab.inventory), "app", str(spec), "-o", str(archive), "--format", fmt, "--host", h)
    dockerd.docker("load", "-i", str(archive))
    dockerd.docker("create", "--name", f"exported-{fmt}", "app:latest", "/bin/sh")
    problems = diff_manifests(docker_image["export"], dockerd.export_manifest(f"exported-{fmt}"),
                              labels=("docker build", "lamina export"))
    dockerd.docker("rm", f"exported-{fmt}")
    dockerd.docker("rmi", "app:latest")
    assert problems == [], "\n".join(problems)
