"""The Docker Engine reference harness works: import, build, create, export, diff, save.

Quick checks of tests/dockerlib.py against the real engine (the session's ``dockerd`` fixture),
so tests that compare lamina with Docker can trust it. Timings go to the terminal.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
import time
from pathlib import Path

import pytest

from lamina.rootfs import add_entry

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/, for dockerlib
import dockerlib  # noqa: E402
from dockerlib import DOCKER_EXPORT_NOISE, Entry, diff_manifests, tar_manifest  # noqa: E402

BASE_REF = "lamina-test/busybox:1"
BUILT_REF = "lamina-test/built:1"
TIMINGS: dict[str, float] = {}

DOCKERFILE = """\
FROM lamina-test/busybox:1
RUN mkdir /x && echo hi > /x/f && rm /bin/true
COPY somefile /app/
ADD some.tar.gz /opt/
"""


def _report(capsys, what: str) -> None:
    with capsys.disabled():
        print(f"\n[docker timings] {what}", flush=True)


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory) -> Path:
    return dockerlib.busybox_rootfs(tmp_path_factory.mktemp("rootfs") / "busybox-rootfs.tar")


@pytest.fixture(scope="module")
def base_image(dockerd, rootfs) -> str:
    t0 = time.monotonic()
    dockerd.import_image(rootfs, BASE_REF)
    TIMINGS["import"] = time.monotonic() - t0
    return BASE_REF


def _context(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (ctx / "somefile").write_text("some content\n")
    (ctx / "somefile").chmod(0o640)
    with tarfile.open(ctx / "some.tar.gz", "w:gz") as tf:
        for name, kind, mode, payload in [
            ("pkg", "dir", 0o755, None),
            ("pkg/bin", "dir", 0o750, None),
            ("pkg/bin/run.sh", "file", 0o4755, b"#!/bin/sh\necho run\n"),
            ("pkg/data.txt", "file", 0o644, b"data\n"),
            ("pkg/link", "symlink", 0o777, "data.txt"),
        ]:
            add_entry(tf, name, kind, mode, payload, uid=1000)
    return ctx


@pytest.fixture(scope="module")
def built_image(dockerd, base_image, tmp_path_factory) -> str:
    ctx = _context(tmp_path_factory.mktemp("build"))
    t0 = time.monotonic()
    dockerd.docker("build", "-q", "-t", BUILT_REF, str(ctx))
    TIMINGS["build"] = time.monotonic() - t0
    return BUILT_REF


def test_engine_and_storage(dockerd, capsys):
    info = dockerd.info()
    assert info["ServerVersion"].startswith("20.10"), info["ServerVersion"]
    assert info["Driver"] == "overlay2"
    status = dict(info["DriverStatus"])
    assert status.get("Supports d_type") == "true", status
    assert info["DockerRootDir"] == str(dockerd.data_root)
    # no default bridge: the engine made no network devices of its own
    nets = dockerd.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert "bridge" not in nets, nets
    installed = ", ".join(dockerd.installed) or "nothing (already installed)"
    _report(capsys, f"install: {installed} in {dockerd.install_seconds:.1f}s; dockerd start "
                    f"{dockerd.start_seconds:.2f}s; engine {info['ServerVersion']}, {info['Driver']} on "
                    f"{status.get('Backing Filesystem')}, cgroup v{info.get('CgroupVersion')}")


def test_busybox_rootfs_is_deterministic(tmp_path, rootfs):
    again = dockerlib.busybox_rootfs(tmp_path / "again.tar")
    assert again.read_bytes() == rootfs.read_bytes()
    m = tar_manifest(rootfs)
    assert m["/tmp"] == Entry("dir", 0o1777, 0, 0)
    assert m["/bin/sh"] == Entry("symlink", 0o777, 0, 0, "busybox")
    assert m["/bin/busybox"].type == "file" and m["/bin/busybox"].mode == 0o755


def test_export_of_imported_image_adds_only_the_noise(dockerd, base_image, rootfs):
    cid = dockerd.docker("create", base_image, "/bin/sh").stdout.strip()
    try:
        exported = dockerd.export_manifest(cid)
    finally:
        dockerd.docker("rm", cid)
    original = tar_manifest(rootfs)
    assert diff_manifests(original, exported, ignore=DOCKER_EXPORT_NOISE, labels=("rootfs", "export")) == []
    # DOCKER_EXPORT_NOISE is exactly what export adds: each prefix is there, nothing else is
    extra = {p for p in exported if p not in original}
    assert {n for n in DOCKER_EXPORT_NOISE if n in exported} == set(DOCKER_EXPORT_NOISE)
    assert all(any(p == n or p.startswith(n + "/") for n in DOCKER_EXPORT_NOISE) for p in extra), extra


def test_build_create_export(dockerd, built_image, capsys):
    cid = dockerd.docker("create", built_image, "/bin/sh").stdout.strip()
    try:
        t0 = time.monotonic()
        out = dockerd.docker("export", cid, text=False).stdout
        TIMINGS["export"] = time.monotonic() - t0
    finally:
        dockerd.docker("rm", cid)
    m = tar_manifest(io.BytesIO(out))
    hi = hashlib.sha256(b"hi\n").hexdigest()
    assert m["/x"] == Entry("dir", 0o755, 0, 0)
    assert m["/x/f"] == Entry("file", 0o644, 0, 0, "", hi)
    assert "/bin/true" not in m and "/bin/false" in m
    # COPY: owner 0:0, mode kept from the build context; missing /app made 0755
    assert m["/app"] == Entry("dir", 0o755, 0, 0)
    some = hashlib.sha256(b"some content\n").hexdigest()
    assert m["/app/somefile"] == Entry("file", 0o640, 0, 0, "", some)
    # ADD of a local .tar.gz: extracted, owners and modes (suid too) as in the archive
    assert m["/opt/pkg"] == Entry("dir", 0o755, 1000, 1000)
    assert m["/opt/pkg/bin"] == Entry("dir", 0o750, 1000, 1000)
    assert m["/opt/pkg/bin/run.sh"].mode == 0o4755
    assert m["/opt/pkg/link"] == Entry("symlink", 0o777, 1000, 1000, "data.txt")
    assert m["/opt/pkg/data.txt"].sha256 == hashlib.sha256(b"data\n").hexdigest()
    assert "/opt/some.tar.gz" not in m
    _report(capsys, f"import {TIMINGS['import']:.2f}s, build (3 steps) {TIMINGS['build']:.2f}s, "
                    f"export {TIMINGS['export']:.2f}s ({len(out) / 1e6:.1f} MB)")


def test_docker_diff(dockerd, built_image):
    name = "lamina-test-diff"
    dockerd.docker("run", "--name", name, "--network", "none", built_image, "/bin/sh", "-c",
                   "echo new > /new && rm /etc/group && echo more >> /x/f && mkdir -p /opt/pkg/sub")
    try:
        d = dockerd.diff(name)
        m = dockerd.export_manifest(name)
    finally:
        dockerd.docker("rm", name)
    assert d["/new"] == "A"
    assert d["/etc/group"] == "D"
    assert d["/x/f"] == "C" and d["/x"] == "C"
    assert d["/opt/pkg/sub"] == "A"
    assert m["/x/f"].sha256 == hashlib.sha256(b"hi\nmore\n").hexdigest()
    assert "/etc/group" not in m
    # what a run adds to the container besides its own changes is noise for export, too
    assert not [p for p in d if p not in ("/new", "/etc", "/etc/group", "/x", "/x/f", "/opt", "/opt/pkg",
                                          "/opt/pkg/sub")], d


def test_save_lists_layers(dockerd, built_image, tmp_path, capsys):
    t0 = time.monotonic()
    saved = tmp_path / "image.tar"
    dockerd.docker("save", "-o", saved, built_image)
    TIMINGS["save"] = time.monotonic() - t0
    with tarfile.open(saved) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))
        assert len(manifest) == 1 and manifest[0]["RepoTags"] == [built_image]
        layers = manifest[0]["Layers"]
        # import + RUN + COPY + ADD
        assert len(layers) == 4, layers
        config = json.load(tf.extractfile(manifest[0]["Config"]))
        assert len(config["rootfs"]["diff_ids"]) == 4
        per_layer = [tar_manifest(tf.extractfile(name)) for name in layers]
    # layer tars carry the overlay changes in OCI form: RUN's rm is a whiteout
    run_layer, copy_layer, add_layer = per_layer[1:]
    assert "/bin/.wh.true" in run_layer, sorted(run_layer)
    assert "/x/f" in run_layer
    assert "/app/somefile" in copy_layer
    assert "/opt/pkg/data.txt" in add_layer
    assert diff_manifests(per_layer[0], tar_manifest(dockerlib.busybox_rootfs(tmp_path / "r.tar"))) == []
    _report(capsys, f"save {TIMINGS['save']:.2f}s")


def test_manifest_diff_reports_fields():
    a = {"/f": Entry("file", 0o644, 0, 0, "", "ab" * 32), "/d": Entry("dir", 0o755, 0, 0)}
    b = {"/f": Entry("file", 0o600, 0, 1, "", "ab" * 32), "/dev/x": Entry("char", 0o666, 0, 0, "", "", (1, 3))}
    lines = diff_manifests(a, b)
    assert lines == [
        "/d: only in a (dir 0755 0:0)",
        "/dev/x: only in b (char 0666 0:0 dev 1,3)",
        "/f: mode 0644 (a) != 0600 (b), gid 0 (a) != 1 (b)",
    ]
    assert diff_manifests(a, b, ignore=["/dev", "/f", "/d"]) == []
    assert diff_manifests(a, b, ignore=["/de"]) != []


def test_hardlinks_read_as_files(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ti = tarfile.TarInfo("./a")
        ti.size, ti.mode = 3, 0o600
        tf.addfile(ti, io.BytesIO(b"abc"))
        hl = tarfile.TarInfo("./b")
        hl.type, hl.linkname, hl.mode = tarfile.LNKTYPE, "./a", 0o600
        tf.addfile(hl)
        d = tarfile.TarInfo("./")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        tf.addfile(d)
    m = tar_manifest(buf.getvalue())
    assert m["/b"] == m["/a"] == Entry("file", 0o600, 0, 0, "", hashlib.sha256(b"abc").hexdigest())
    assert m["/"] == Entry("dir", 0o755, 0, 0)
