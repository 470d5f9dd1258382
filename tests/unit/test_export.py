"""lamina.tarball export: write_docker_archive / write_oci_archive, read back by lamina's own importers
(and by skopeo when it is installed). `docker load` itself was checked by hand against Docker 20.10."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from lamina import tarball
from lamina.tarball import Layer

OPQ = "SCHILY.xattr.trusted.overlay.opaque"
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("LAMINA_CACHE_DIR", str(path))
    return path


def tar_of(rows: list[tuple], fmt=tarfile.PAX_FORMAT) -> bytes:
    """rows: (name, kind, extra, pax); kind f d l h c (c: char device 0/0)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for row in rows:
            name, kind, extra, pax = (*row, *[None] * (4 - len(row)))
            ti = tarfile.TarInfo(name)
            ti.mtime, ti.mode, ti.uname = 1_600_000_000, {"d": 0o755, "c": 0}.get(kind, 0o644), "someone"
            ti.pax_headers = pax or {}
            data = None
            if kind == "f":
                data = (extra or "").encode()
                ti.size = len(data)
            else:
                ti.type = {"d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE, "h": tarfile.LNKTYPE, "c": tarfile.CHRTYPE}[kind]
                ti.linkname = extra or ""
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def build_layers(tmp_path: Path) -> list[Layer]:
    """Three layers lamina built: COPY of a tree (hard link, symlink), ADD of a tar, and a fetched upper
    dir with whiteouts, an opaque dir and a big-ish file."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "zz").write_text("shared\n")
    os.link(src / "zz", src / "sub" / "hard")
    (src / "sub" / "link").symlink_to("../a.txt")
    copy = tarball.from_directory(src, "/app", owner=(1000, 1000))
    add = tmp_path / "add.tar"
    add.write_bytes(tar_of([("etc", "d"), ("etc/conf", "f", "v1"), ("etc/old", "f", "o"), ("opt", "d"),
                            ("opt/x", "f", "x"), ("data", "f", "é" * 5000)]))
    added = tarball.from_archive(add, "/")
    upper = tmp_path / "upper.tar"
    upper.write_bytes(tar_of([("./", "d"), ("./etc", "d"), ("./etc/old", "c"), ("./etc/conf", "f", "v2"),
                              ("./opt", "d", None, {OPQ: "y"}), ("./opt/y", "f", "y"),
                              ("./big", "f", "0123456789" * 300_000)]))
    fetched = tarball.from_overlay_tar(upper)
    return [copy, added, fetched]


def read_tar(path: Path) -> dict[str, bytes | None]:
    with tarfile.open(path) as tf:
        return {m.name: tf.extractfile(m).read() if m.isreg() else None for m in tf.getmembers()}


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_docker_archive_layout_and_round_trip(tmp_path):
    layers = build_layers(tmp_path)
    out = tmp_path / "image.tar"
    image_id = tarball.write_docker_archive(layers, out, "lamina/app:1.0", {"Cmd": ["/bin/sh"]})
    files = read_tar(out)
    hexes = [la.diff_id.removeprefix("sha256:") for la in layers]
    config_name = image_id.removeprefix("sha256:") + ".json"
    assert list(files) == [n for h in hexes for n in (h, f"{h}/layer.tar")] + [config_name, "manifest.json",
                                                                                 "repositories"]
    for la, h in zip(layers, hexes, strict=True):  # uncompressed OCI form, hashing to the DiffID
        assert sha(files[f"{h}/layer.tar"]) == la.diff_id
    assert sha(files[config_name]) == image_id
    config = json.loads(files[config_name])
    assert config == {"architecture": ARCH, "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                      "created": "1970-01-01T00:00:00Z",
                      "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "lamina"}] * 3,
                      "rootfs": {"type": "layers", "diff_ids": [la.diff_id for la in layers]}}
    assert json.loads(files["manifest.json"]) == [{"Config": config_name, "RepoTags": ["lamina/app:1.0"],
                                                   "Layers": [f"{h}/layer.tar" for h in hexes]}]
    assert json.loads(files["repositories"]) == {"lamina/app": {"1.0": hexes[-1]}}

    oci = {m.name: m for m in tarfile.open(fileobj=io.BytesIO(files[f"{hexes[2]}/layer.tar"]))}
    assert {"etc/.wh.old", "opt/.wh..wh..opq"} <= set(oci) and OPQ not in oci["opt"].pax_headers

    back = tarball.from_docker_archive(out)
    assert back == layers  # same DiffIDs, and the very same overlay-form tars
    # deterministic: the same image gives the same bytes; no tag means "latest"
    again = tmp_path / "again.tar"
    assert tarball.write_docker_archive(layers, again, "lamina/app:1.0", {"Cmd": ["/bin/sh"]}) == image_id
    assert again.read_bytes() == out.read_bytes()
    tarball.write_docker_archive(layers, again, "localhost:5000/app")
    assert json.loads(read_tar(again)["manifest.json"])[0]["RepoTags"] == ["localhost:5000/app:latest"]


def test_oci_archive_layout_and_round_trip(tmp_path):
    layers = build_layers(tmp_path)
    out = tmp_path / "image.oci.tar"
    digest = tarball.write_oci_archive(layers, out, "app:1.0", {"Env": ["A=1"]})
    files = read_tar(out)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    (desc,) = index["manifests"]
    assert desc["annotations"] == {"org.opencontainers.image.ref.name": "app:1.0"} and desc["digest"] == digest
    manifest_raw = files["blobs/sha256/" + digest.removeprefix("sha256:")]
    assert sha(manifest_raw) == digest and desc["size"] == len(manifest_raw)
    manifest = json.loads(manifest_raw)
    assert manifest["mediaType"] == desc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    for la, d in zip(layers, manifest["layers"], strict=True):
        blob = files["blobs/sha256/" + d["digest"].removeprefix("sha256:")]
        assert d == {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": la.diff_id, "size": len(blob)}
        assert sha(blob) == la.diff_id
    config_raw = files["blobs/sha256/" + manifest["config"]["digest"].removeprefix("sha256:")]
    assert json.loads(config_raw)["config"] == {"Env": ["A=1"]}
    # the same config as the docker archive's: the same image ID either way
    assert tarball.write_docker_archive(layers, tmp_path / "d.tar", "app:1.0", {"Env": ["A=1"]}) == sha(config_raw)

    assert tarball.from_oci_archive(out) == layers
    # manifest.json (as Docker 25 writes beside the OCI layout) makes it a docker archive too
    assert json.loads(files["manifest.json"])[0]["RepoTags"] == ["app:1.0"]
    assert tarball.from_docker_archive(out) == layers
    # a ref Docker cannot take as a tag: still a valid OCI archive, loaded untagged by docker
    tarball.write_oci_archive(layers, out, "1.0-Final")
    assert json.loads(read_tar(out)["manifest.json"])[0]["RepoTags"] == []
    assert json.loads(read_tar(out)["index.json"])["manifests"][0]["annotations"] == {
        "org.opencontainers.image.ref.name": "1.0-Final"}


def test_repeated_layer_is_stored_once_and_empty_stack(tmp_path):
    (layer,) = build_layers(tmp_path)[:1]
    out = tmp_path / "image.tar"
    tarball.write_oci_archive([layer, layer], out, "twice")
    files = read_tar(out)
    assert sum(1 for n in files if n.startswith("blobs/sha256/")) == 3  # layer, config, manifest
    assert tarball.from_oci_archive(out) == [layer, layer]
    tarball.write_docker_archive([layer, layer], out, "twice")
    assert tarball.from_docker_archive(out) == [layer, layer]
    tarball.write_docker_archive([], out, "empty")
    assert tarball.from_docker_archive(out) == []


def test_a_layer_whose_oci_form_cannot_be_regenerated_is_refused(tmp_path):
    # An imported layer keeps its original DiffID, but lamina stores only the normalized overlay form:
    # a blob written by another tool (uname, order, .wh. modes) cannot be reproduced byte for byte.
    foreign = tar_of([("b", "f", "b"), ("a", "f", "a"), (".wh.gone", "f")], fmt=tarfile.GNU_FORMAT)
    docker = tmp_path / "foreign.tar"
    tarball.write_docker_archive([], docker, "x")  # a valid archive, then swap in the foreign layer
    files = read_tar(docker)
    config = json.loads(next(v for k, v in files.items() if k.endswith(".json") and k != "manifest.json"))
    config["rootfs"]["diff_ids"] = [sha(foreign)]
    with tarfile.open(docker, "w") as tf:
        for name, data in {"c.json": json.dumps(config).encode(), "l/layer.tar": foreign,
                           "manifest.json": json.dumps([{"Config": "c.json", "Layers": ["l/layer.tar"]}]).encode()
                           }.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    (imported,) = tarball.from_docker_archive(docker)
    out = tmp_path / "out.tar"
    for write in (tarball.write_docker_archive, tarball.write_oci_archive):
        with pytest.raises(ValueError, match="cannot be written back byte for byte"):
            write([imported], out, "x")
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    # a corrupt cached overlay form is caught the same way
    (good,) = build_layers(tmp_path / "b")[:1]
    data = bytearray(good.path.read_bytes())
    data[data.index(b"alpha")] = ord("A")
    good.path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="DiffID"):
        tarball.write_oci_archive([good], out, "x")


def test_bad_arguments(tmp_path):
    layers = build_layers(tmp_path)[:1]
    for ref in ("UPPER:1", "a@sha256:" + "0" * 64, "", "a:b:c"):
        with pytest.raises(ValueError, match="not a Docker repository"):
            tarball.write_docker_archive(layers, tmp_path / "x.tar", ref)
    with pytest.raises(ValueError, match="not an image reference"):
        tarball.write_oci_archive(layers, tmp_path / "x.tar", "")
    with pytest.raises(ValueError, match="must be a dict"):
        tarball.write_oci_archive(layers, tmp_path / "x.tar", "a", config=["Cmd"])  # type: ignore[arg-type]
    bad = Layer("sha256:xyz", layers[0].path, layers[0].sha256, layers[0].size)
    with pytest.raises(ValueError, match="not a sha256"):
        tarball.write_docker_archive([bad], tmp_path / "x.tar", "a")
    assert not (tmp_path / "x.tar").exists()


def test_member_header_holds_sizes_past_8_gib():
    size = 9 << 30
    hdr = tarball._archive_header("blobs/sha256/" + "a" * 64, size)
    assert len(hdr) == 512
    info = tarfile.TarInfo.frombuf(hdr, "utf-8", "strict")
    assert (info.size, info.mode, info.mtime, info.uid) == (size, 0o644, 0, 0)


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
def test_skopeo_reads_both_archives(tmp_path):
    layers = build_layers(tmp_path)
    oci, docker = tmp_path / "image.oci.tar", tmp_path / "image.tar"
    digest = tarball.write_oci_archive(layers, oci, "lamina/app:1")
    image_id = tarball.write_docker_archive(layers, docker, "lamina/app:1")
    for src, dest in ((f"oci-archive:{oci}:lamina/app:1", tmp_path / "from-oci"),
                      (f"docker-archive:{docker}", tmp_path / "from-docker")):
        # skopeo verifies every blob against its digest while copying
        subprocess.run(["skopeo", "copy", "-q", src, f"dir:{dest}"], check=True, capture_output=True)
        manifest = json.loads((dest / "manifest.json").read_text())
        assert manifest["config"]["digest"] == image_id
        assert [d["digest"] for d in manifest["layers"]] == [la.diff_id for la in layers]
    assert sha((tmp_path / "from-oci" / "manifest.json").read_bytes()) == digest
