"""lamina.tarball: deterministic layers, COPY/ADD semantics, image imports, whiteouts, the cache."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import zstandard

from lamina import tarball
from lamina.tarball import Layer

OPQ = "SCHILY.xattr.trusted.overlay.opaque"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mknod, trusted.* xattrs, mount")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("LAMINA_CACHE_DIR", str(path))
    return path


# ---- helpers -----------------------------------------------------------------------------


def members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tf:
        return {m.name: m for m in tf.getmembers()}


def names(path: Path) -> list[str]:
    with tarfile.open(path) as tf:
        return [m.name + ("/" if m.isdir() else "") for m in tf.getmembers()]


def content(path: Path, name: str) -> bytes:
    with tarfile.open(path) as tf:
        return tf.extractfile(name).read()


def tar_bytes(spec: list[tuple], gnu: bool = False) -> bytes:
    """spec rows: (name, kind, extra, mode, uid, mtime); kind: f(ile) d(ir) l(symlink) h(ardlink) c(hardev)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT if gnu else tarfile.PAX_FORMAT) as tf:
        for row in spec:
            name, kind, extra, mode, uid, mtime = (*row, *[None] * (6 - len(row)))
            ti = tarfile.TarInfo(name)
            ti.mode = mode if mode is not None else (0o755 if kind == "d" else 0o644)
            ti.uid = ti.gid = uid or 0
            ti.mtime = 1_600_000_000 if mtime is None else mtime
            data = None
            if kind == "f":
                data = extra if isinstance(extra, bytes) else (extra or "").encode()
                ti.size = len(data)
            elif kind == "d":
                ti.type = tarfile.DIRTYPE
            elif kind == "l":
                ti.type, ti.linkname = tarfile.SYMTYPE, extra
            elif kind == "h":
                ti.type, ti.linkname = tarfile.LNKTYPE, extra
            elif kind == "c":
                ti.type = tarfile.CHRTYPE
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_tree(root: Path) -> Path:
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "sub" / "deep" / "z").write_bytes(os.urandom(3000))
    (root / "sub" / "link").symlink_to("../a.txt")
    (root / "zz").write_text("shared\n")
    os.link(root / "zz", root / "sub" / "hard")  # the link sorts before its original
    return root


# ---- from_directory ------------------------------------------------------------------------


def test_copy_dir_is_deterministic_across_builds_copies_and_touch(tmp_path, cache, monkeypatch):
    src = make_tree(tmp_path / "src")
    first = tarball.from_directory(src, "/app")
    assert first.diff_id.startswith("sha256:") and first.path.parent == cache / "layers"
    assert first.path.name == first.sha256 + ".tar"
    assert hashlib.sha256(first.path.read_bytes()).hexdigest() == first.sha256
    assert first.size == first.path.stat().st_size

    # another cache, another copy of the tree (other inodes, paths), all mtimes changed
    monkeypatch.setenv("LAMINA_CACHE_DIR", str(tmp_path / "cache2"))
    other = tmp_path / "other"
    shutil.copytree(src, other, symlinks=True)
    os.unlink(other / "sub" / "hard")
    os.link(other / "zz", other / "sub" / "hard")
    for p in [other, *other.rglob("*")]:
        os.utime(p, (1, 1), follow_symlinks=False)
    second = tarball.from_directory(other, "/app")
    assert (second.diff_id, second.sha256, second.size) == (first.diff_id, first.sha256, first.size)

    # touch → cache miss (identity changed) → rebuilt → same layer
    monkeypatch.setenv("LAMINA_CACHE_DIR", str(cache))
    os.utime(src / "a.txt")
    assert tarball.from_directory(src, "/app") == first


def test_copy_dir_entries_metadata_links(tmp_path):
    src = make_tree(tmp_path / "src")
    layer = tarball.from_directory(src, "/srv/app")
    assert names(layer.path) == ["srv/", "srv/app/", "srv/app/a.txt", "srv/app/run.sh", "srv/app/sub/",
                                 "srv/app/sub/deep/", "srv/app/sub/deep/z", "srv/app/sub/hard",
                                 "srv/app/sub/link", "srv/app/zz"]
    m = members(layer.path)
    for ti in m.values():
        assert (ti.uid, ti.gid, ti.uname, ti.gname, ti.mtime) == (0, 0, "", "", 0)
        assert not {"atime", "ctime"} & set(ti.pax_headers)
    assert m["srv"].mode == m["srv/app"].mode == 0o755
    assert m["srv/app/run.sh"].mode == 0o755 and m["srv/app/a.txt"].mode == 0o644
    assert m["srv/app/sub/link"].issym() and m["srv/app/sub/link"].linkname == "../a.txt"
    # hard link: the first name in order carries the data, the original links to it
    assert m["srv/app/sub/hard"].isreg() and m["srv/app/sub/hard"].size == 7
    assert m["srv/app/zz"].islnk() and m["srv/app/zz"].linkname == "srv/app/sub/hard"
    assert content(layer.path, "srv/app/sub/deep/z") == (src / "sub" / "deep" / "z").read_bytes()
    # PAX (ustar headers, extended headers only when needed) and a 1024-byte end of archive
    raw = layer.path.read_bytes()
    assert raw[257:263] == b"ustar\x00" and raw.endswith(bytes(1024)) and len(raw) % 512 == 0
    # no whiteouts: the OCI form is the same stream, so DiffID == sha256 of the shipped tar
    assert layer.diff_id == "sha256:" + layer.sha256


def test_copy_file_vs_dest_with_slash_vs_root(tmp_path):
    f = tmp_path / "conf.ini"
    f.write_text("x=1\n")
    f.chmod(0o640)
    exact = tarball.from_directory(f, "/etc/app.conf")
    assert names(exact.path) == ["etc/", "etc/app.conf"]
    assert members(exact.path)["etc/app.conf"].mode == 0o640
    into = tarball.from_directory(f, "/etc/")
    assert names(into.path) == ["etc/", "etc/conf.ini"]
    assert names(tarball.from_directory(f, "/").path) == ["conf.ini"]
    d = tmp_path / "d"
    d.mkdir()
    (d / "x").write_text("x")
    assert names(tarball.from_directory(d, "/").path) == ["x"]  # contents only, root untouched
    assert names(tarball.from_directory(d, "/opt/").path) == ["opt/", "opt/x"]
    with pytest.raises(ValueError, match="does not exist"):
        tarball.from_directory(tmp_path / "missing", "/x")
    with pytest.raises(ValueError, match="leaves"):
        tarball.from_directory(f, "/../x")


def test_copy_mode_and_owner_override(tmp_path):
    src = make_tree(tmp_path / "src")
    layer = tarball.from_directory(src, "/app", mode=0o600, owner=(1000, 1001))
    m = members(layer.path)
    assert (m["app"].mode, m["app"].uid, m["app"].gid) == (0o600, 1000, 1001)
    assert (m["app/a.txt"].mode, m["app/a.txt"].uid) == (0o600, 1000)
    assert m["app/sub/deep"].mode == 0o600
    assert m["app/sub/link"].issym() and m["app/sub/link"].uid == 1000
    plain = tarball.from_directory(src, "/app")
    assert layer.diff_id != plain.diff_id


def test_known_diff_id_guards_the_byte_format(tmp_path):
    # If this changes, every layer identity changes: bump FORMAT_VERSION and say so.
    src = tmp_path / "s"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("hello\n")
    (src / "d" / "f").chmod(0o644)
    (src / "d").chmod(0o755)
    (src / "l").symlink_to("d/f")
    layer = tarball.from_directory(src, "/x")
    assert layer.diff_id == GOLDEN


GOLDEN = "sha256:dd02f78af55be97e32a015c380efd2fd029fc554f65dc2e12cc4305a44f9f462"


# ---- from_archive --------------------------------------------------------------------------

ADD_SPEC = [
    ("./", "d"),
    ("./bin", "d", None, 0o750, 0, 1_500_000_000),
    ("./bin/tool", "f", "#!/bin/sh\n", 0o4755, 33, 1_500_000_001),
    ("./bin/.wh.data", "f", "not a whiteout"),
    ("lib/deep/x.so", "f", "elf"),  # parents absent from the archive
    ("./bin/alias", "h", "./bin/tool"),
    ("sh", "l", "/bin/tool"),
]


@pytest.mark.parametrize("codec", ["plain", "gzip", "zstd", "xz", "bzip2"])
def test_add_archive_rerooted_any_compression(tmp_path, codec):
    raw = tar_bytes(ADD_SPEC)
    packed = {"plain": lambda b: b, "gzip": gzip.compress, "xz": lzma.compress, "bzip2": bz2.compress,
              "zstd": zstandard.ZstdCompressor().compress}[codec](raw)
    src = tmp_path / f"root.{codec}"
    src.write_bytes(packed)
    layer = tarball.from_archive(src, "/opt/r")
    assert names(layer.path) == ["opt/", "opt/r/", "opt/r/bin/", "opt/r/bin/.wh.data", "opt/r/bin/alias",
                                 "opt/r/bin/tool", "opt/r/lib/", "opt/r/lib/deep/", "opt/r/lib/deep/x.so",
                                 "opt/r/sh"]
    m = members(layer.path)
    assert (m["opt"].mode, m["opt"].mtime, m["opt/r"].mode, m["opt/r/lib"].mode) == (0o755, 0, 0o755, 0o755)
    assert (m["opt/r/bin"].mode, m["opt/r/bin"].mtime) == (0o750, 1_500_000_000)
    assert m["opt/r/bin/alias"].isreg() and m["opt/r/bin/alias"].mode == 0o4755  # first of the link group
    assert m["opt/r/bin/tool"].islnk() and m["opt/r/bin/tool"].linkname == "opt/r/bin/alias"
    assert (m["opt/r/bin/alias"].uid, m["opt/r/bin/alias"].mtime) == (33, 1_500_000_001)
    assert m["opt/r/bin/.wh.data"].isreg()  # ADD does not interpret whiteouts
    assert m["opt/r/sh"].linkname == "/bin/tool"
    if codec != "plain":  # the same content gives the same layer whatever the compression
        plain = tmp_path / "root.tar"
        plain.write_bytes(raw)
        assert tarball.from_archive(plain, "/opt/r").diff_id == layer.diff_id


def test_add_at_root_and_last_duplicate_wins(tmp_path):
    src = tmp_path / "a.tar"
    src.write_bytes(tar_bytes([("etc", "d"), ("etc/x", "f", "old"), ("etc/x", "f", "new")]))
    layer = tarball.from_archive(src)
    assert names(layer.path) == ["etc/", "etc/x"]
    assert content(layer.path, "etc/x") == b"new"


def test_add_gnu_format_long_and_non_ascii_names(tmp_path):
    long = "d/" + "n" * 150
    src = tmp_path / "gnu.tar"
    src.write_bytes(tar_bytes([(long, "f", "l"), ("d/\u00e9t\u00e9", "f", "e"), ("d/s", "l", "x" * 120)], gnu=True))
    layer = tarball.from_archive(src, "/r")
    m = members(layer.path)
    assert content(layer.path, "r/" + long) == b"l" and "r/d/\u00e9t\u00e9" in m and m["r/d/s"].linkname == "x" * 120
    listing = subprocess.run(["tar", "-tf", str(layer.path)], capture_output=True, text=True, check=True).stdout
    assert "r/" + long in listing.splitlines()
    with pytest.raises(ValueError, match="not a file"):
        tarball.from_archive(tmp_path, "/")


@pytest.mark.parametrize("spec, message", [
    ([("../evil", "f", "x")], "leaves the archive root"),
    ([("a/../../evil", "f", "x")], "leaves the archive root"),
    ([("ok", "f", "x"), ("h", "h", "../../etc/passwd")], "leaves the archive root"),
    ([("etc", "l", "/etc"), ("etc/passwd", "f", "root::0:0")], "symlink"),
    ([("x", "h", "nowhere")], "not an earlier entry"),
])
def test_add_rejects_escapes(tmp_path, spec, message):
    src = tmp_path / "bad.tar"
    src.write_bytes(tar_bytes(spec))
    with pytest.raises(ValueError, match=message):
        tarball.from_archive(src, "/")


def test_add_bad_input(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar archive at all" * 40)
    with pytest.raises(ValueError, match="not a readable archive"):
        tarball.from_archive(junk)
    raw = tar_bytes([("f", "f", os.urandom(5000)), ("g", "f", "y" * 3000)])
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(gzip.compress(raw)[:3000])
    with pytest.raises(ValueError, match="not a readable archive"):
        tarball.from_archive(broken)
    for cut in (3000, 6000):  # inside a member's data; inside the second header
        broken.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match="not a readable archive|truncated"):
            tarball.from_archive(broken)
    with pytest.raises(ValueError, match="does not exist"):
        tarball.from_archive(tmp_path / "nope.tar")


# ---- imports -------------------------------------------------------------------------------

BASE = [("etc", "d"), ("etc/keep", "f", "k"), ("etc/gone", "f", "g"), ("opt", "d"), ("opt/old", "f", "o"),
        ("var", "d"), ("var/lib", "d"), ("var/lib/old", "f", "v"), ("srv", "d"), ("srv/old", "f", "s")]
TOP = [
    ("etc/.wh.gone", "f", "", 0o600, 0, 1_700_000_000),  # delete a file
    ("opt", "d", None, 0o711),
    ("opt/new", "f", "n"),
    ("opt/.wh..wh..opq", "f"),  # opaque, after its siblings: order does not matter
    ("var/lib/.wh..wh..opq", "f"),  # opaque dir without a directory entry in the layer
    ("srv/.wh.old", "f"),
    ("srv/old", "f", "again"),  # whiteout + same-layer file: the file stays
    ("etc/.wh.sub", "f"),
    ("etc/sub", "d"),  # deleted and re-created in the same layer: opaque
    ("etc/sub/n", "f", "n"),
    (".wh..wh..plnk", "d"),  # AUFS metadata: ignored
]


def docker_archive(tmp_path: Path, layers: list[bytes], diff_ids: list[str] | None = None,
                   compress=lambda b: b) -> Path:
    diff_ids = diff_ids or [sha(b) for b in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    files = {"cfg.json": config}
    for i, raw in enumerate(layers):
        files[f"l{i}/layer.tar"] = compress(raw)
    files["manifest.json"] = json.dumps([{"Config": "cfg.json", "RepoTags": ["t:1"],
                                          "Layers": [f"l{i}/layer.tar" for i in range(len(layers))]}]).encode()
    path = tmp_path / "image.tar"
    with tarfile.open(path, "w") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


def check_top_overlay_form(layer: Layer) -> None:
    m = members(layer.path)
    gone = m["etc/gone"]
    assert gone.ischr() and (gone.devmajor, gone.devminor, gone.mode, gone.uid, gone.gid) == (0, 0, 0, 0, 0)
    assert gone.mtime == 1_700_000_000
    assert m["opt"].pax_headers.get(OPQ) == "y" and m["opt"].mode == 0o711
    assert m["var/lib"].pax_headers.get(OPQ) == "y" and m["var/lib"].mode == 0o755
    assert m["var"].isdir() and OPQ not in m["var"].pax_headers  # implicit parent, not opaque
    assert m["etc/sub"].pax_headers.get(OPQ) == "y"
    assert OPQ not in m["etc"].pax_headers
    assert m["srv/old"].isreg() and content(layer.path, "srv/old") == b"again"
    assert not [n for n in m if ".wh." in n]


def test_docker_archive_whiteouts_become_overlay_form(tmp_path):
    base, top = tar_bytes(BASE), tar_bytes(TOP)
    layers = tarball.from_docker_archive(docker_archive(tmp_path, [base, top]))
    assert [la.diff_id for la in layers] == [sha(base), sha(top)]
    assert names(layers[0].path)[:2] == ["etc/", "etc/gone"]
    check_top_overlay_form(layers[1])
    assert names(layers[1].path) == ["etc/", "etc/gone", "etc/sub/", "etc/sub/n", "opt/", "opt/new", "srv/",
                                     "srv/old", "var/", "var/lib/"]


def test_docker_archive_gzip_layers_and_gzip_archive(tmp_path):
    base, top = tar_bytes(BASE), tar_bytes(TOP)
    path = docker_archive(tmp_path, [base, top], compress=gzip.compress)
    packed = tmp_path / "image.tar.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    layers = tarball.from_docker_archive(packed)
    assert [la.diff_id for la in layers] == [sha(base), sha(top)]
    check_top_overlay_form(layers[1])


def test_docker_archive_diff_id_mismatch(tmp_path):
    base, top = tar_bytes(BASE), tar_bytes(TOP)
    path = docker_archive(tmp_path, [base, top], diff_ids=[sha(base), sha(b"other")])
    with pytest.raises(ValueError, match=r"layer 1 \(l1/layer.tar\).*DiffID"):
        tarball.from_docker_archive(path)


def test_docker_archive_with_two_images_is_refused(tmp_path):
    path = docker_archive(tmp_path, [tar_bytes(BASE)])
    with tarfile.open(path) as tf:
        files = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
    manifest = json.loads(files["manifest.json"])
    files["manifest.json"] = json.dumps(manifest * 2).encode()
    with tarfile.open(path, "w") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    with pytest.raises(ValueError, match="lists 2 images"):
        tarball.from_docker_archive(path)


def test_root_opaque_is_refused(tmp_path):
    layer = tar_bytes([(".wh..wh..opq", "f"), ("x", "f", "x")])
    with pytest.raises(ValueError, match="layer root"):
        tarball.from_docker_archive(docker_archive(tmp_path, [layer]))


def oci_layout(root: Path, layers: list[bytes], multi: bool = False) -> Path:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes, media: str, **extra) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media, "digest": f"sha256:{digest}", "size": len(data), **extra}

    config = put(json.dumps({"rootfs": {"type": "layers", "diff_ids": [sha(b) for b in layers]}}).encode(),
                 "application/vnd.oci.image.config.v1+json")
    descs = [put(gzip.compress(b, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip") for b in layers]
    manifest = put(json.dumps({"schemaVersion": 2, "config": config, "layers": descs}).encode(),
                   "application/vnd.oci.image.manifest.v1+json",
                   platform={"os": "linux", "architecture": "amd64" if os.uname().machine == "x86_64" else "arm64"})
    top = [manifest]
    if multi:  # an index of two platforms, as `docker buildx` makes
        other = put(json.dumps({"schemaVersion": 2, "config": config, "layers": []}).encode(),
                    "application/vnd.oci.image.manifest.v1+json", platform={"os": "linux", "architecture": "s390x"})
        nested = put(json.dumps({"schemaVersion": 2, "manifests": [manifest, other]}).encode(),
                     "application/vnd.oci.image.index.v1+json")
        top = [nested]
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": top}))
    return root


def test_oci_layout_and_oci_archive(tmp_path):
    base, top = tar_bytes(BASE), tar_bytes(TOP)
    layout = oci_layout(tmp_path / "layout", [base, top])
    layers = tarball.from_oci_layout(layout)
    assert [la.diff_id for la in layers] == [sha(base), sha(top)]
    check_top_overlay_form(layers[1])
    archive = tmp_path / "image.oci.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(layout, arcname=".")
    assert tarball.from_oci_archive(archive) == layers
    multi = tarball.from_oci_layout(oci_layout(tmp_path / "multi", [base, top], multi=True))
    assert multi == layers


def test_oci_layout_bad_blob_digest(tmp_path):
    layout = oci_layout(tmp_path / "layout", [tar_bytes(BASE)])
    index = json.loads((layout / "index.json").read_text())
    manifest = layout / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]
    manifest.write_bytes(manifest.read_bytes() + b" ")
    with pytest.raises(ValueError, match="does not match its digest"):
        tarball.from_oci_layout(layout)


# ---- chain ids -----------------------------------------------------------------------------


def test_chain_ids_by_hand():
    a, b, c = (sha(x) for x in (b"a", b"b", b"c"))
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert tarball.chain_ids([a, b, c]) == [a, ab, abc]
    assert tarball.chain_ids([]) == []
    # a fixed value, so the formula itself cannot drift
    assert abc == "sha256:" + hashlib.sha256(
        ("sha256:" + hashlib.sha256(
            b"sha256:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb "
            b"sha256:3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d").hexdigest()
         + " sha256:2e7d2c03a9507ae265ecf5b5356885a53393a2029d241394997265a1a25aefc6").encode()).hexdigest()
    with pytest.raises(ValueError):
        tarball.chain_ids(["sha256:xyz"])


# ---- cache ---------------------------------------------------------------------------------


def test_cache_hit_is_fast_identical_and_reads_no_content(tmp_path, cache, monkeypatch):
    big = tmp_path / "big.tar"
    with tarfile.open(big, "w") as tf:
        data = os.urandom(1 << 20)
        for i in range(24):
            ti = tarfile.TarInfo(f"f{i:02}")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    first = tarball.from_archive(big, "/data")

    def no_reading(*a, **k):
        raise AssertionError("cache hit must not open the archive")

    with monkeypatch.context() as m:
        m.setattr(tarball, "_open_tar", no_reading)
        t0 = time.perf_counter()
        again = tarball.from_archive(big, "/data")
        elapsed = time.perf_counter() - t0
    assert again == first and elapsed < 0.05

    # other step arguments: another cache entry
    assert tarball.from_archive(big, "/other").diff_id != first.diff_id

    # corrupt index and missing tar are rebuilt
    for index in (cache / "index").iterdir():
        index.write_text("{not json")
    assert tarball.from_archive(big, "/data") == first
    first.path.unlink()
    assert tarball.from_archive(big, "/data") == first and first.path.exists()
    assert not [p for p in (cache / "layers").iterdir() if p.name.startswith(".tmp")]
    assert (cache.stat().st_mode & 0o777) == 0o700


def test_cache_drops_what_was_not_used_lately(tmp_path, cache):
    src = tmp_path / "a.tar"
    with tarfile.open(src, "w") as tf:
        ti = tarfile.TarInfo("f")
        ti.size = 3
        tf.addfile(ti, io.BytesIO(b"abc"))
    first = tarball.from_archive(src, "/a")
    stamp = cache / "used" / first.path.name
    entries = [*(cache / "index").iterdir(), first.path]
    (cache / "layers" / ".tmp-left").write_bytes(b"")  # an interrupted build's leftover
    stale = time.time() - tarball.STALE - 60

    def age(paths):
        for p in paths:
            os.utime(p, (stale, stale))

    age([*entries, cache / "layers" / ".tmp-left"])  # (no stamp yet: a build is not a use)
    tar_before = os.stat(first.path)
    assert tarball.from_archive(src, "/a") == first  # a hit marks its entries used...
    assert stamp.stat().st_mtime > time.time() - 60 and os.stat(first.path) == tar_before  # (not the tar itself)
    pruned = cache / "used" / ".pruned"  # the first miss pruned the cache: the next, a day later

    def a_day_later():
        os.utime(pruned, (time.time() - tarball.planstore.DAY - 60,) * 2)

    a_day_later()
    tarball.from_archive(src, "/b")  # ...so a miss (which prunes) keeps them
    assert all(p.exists() for p in entries) and not (cache / "layers" / ".tmp-left").exists()

    age([*entries, stamp])
    tarball.from_archive(src, "/c")  # a miss, but the cache was pruned less than a day ago
    assert all(p.exists() for p in entries)
    a_day_later()
    other = tarball.from_archive(src, "/d")  # a miss a day later: what was not used for STALE goes
    assert not any(p.exists() for p in [*entries, stamp]) and other.path.exists() and pruned.exists()
    assert tarball.from_archive(src, "/a") == first and first.path.exists()  # made again when asked


# ---- the reverse conversion ----------------------------------------------------------------


def layout_of_oci_tar(root: Path, raw: bytes) -> Path:
    return oci_layout(root, [raw])


def test_round_trip_plain_tree(tmp_path):
    src = make_tree(tmp_path / "upper")
    buf = io.BytesIO()
    d1 = tarball.oci_tar_from_overlay_dir(src, buf)
    assert d1 == sha(buf.getvalue())
    buf2 = io.BytesIO()
    assert tarball.oci_tar_from_overlay_dir(src, buf2) == d1 and buf2.getvalue() == buf.getvalue()
    (layer,) = tarball.from_oci_layout(layout_of_oci_tar(tmp_path / "layout", buf.getvalue()))
    assert layer.diff_id == d1
    out = tmp_path / "extracted"
    out.mkdir()
    subprocess.run(["tar", "-x", "--numeric-owner", "-p", "-f", str(layer.path), "-C", str(out)], check=True)
    assert tarball.oci_tar_from_overlay_dir(out, io.BytesIO()) == d1


def extract(layer: Path, into: Path) -> None:
    """What lamina/sh/ship.sh runs on a host (without security.capability the host would drop file caps)."""
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "--xattrs", "--xattrs-include=trusted.*", "--xattrs-include=security.capability",
                    "--numeric-owner", "-p", "-f", str(layer), "-C", str(into)], check=True)


def umount(path: Path) -> None:
    """umount(8), again for up to 5 s while the kernel says the mount is busy: in a CI run
    (after the integration tests, never alone) it was, twice, just after the test wrote into
    it. Still busy: the processes holding it, to say who."""
    deadline = time.monotonic() + 5
    while (done := subprocess.run(["umount", str(path)], capture_output=True, text=True)).returncode:
        if "busy" not in done.stderr or time.monotonic() > deadline:
            raise AssertionError(f"umount {path}: {done.stderr.strip()}; held by: {holders(path)}")
        time.sleep(0.05)


def holders(path: Path) -> list[str]:
    """The processes whose cwd, root or an open file is under `path`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        links = [f"/proc/{pid}/cwd", f"/proc/{pid}/root"]
        try:
            links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
            held = [t for t in map(_readlink, links) if t and t.startswith(str(path))]
            if held:
                found.append(f"{pid} {Path(f'/proc/{pid}/cmdline').read_bytes()[:80]!r}: {held}")
        except OSError:
            continue
    return found


def _readlink(link: str) -> str | None:
    try:
        return os.readlink(link)
    except OSError:
        return None


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], check=True)
    mounted = []
    yield mnt, mounted
    for m in reversed(mounted):
        subprocess.run(["umount", str(m)], check=False)
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@as_root
def test_overlay_form_is_real_overlayfs_after_gnu_tar(tmp_path, tmpfs):
    """Experiment: GNU tar makes real whiteouts/opaque dirs from the shipped tar, and overlayfs honours them."""
    mnt, mounted = tmpfs
    base, top = tar_bytes(BASE), tar_bytes(TOP)
    l0, l1 = tarball.from_docker_archive(docker_archive(tmp_path, [base, top]))
    extract(l0.path, mnt / "l0")
    extract(l1.path, mnt / "l1")
    st = os.lstat(mnt / "l1" / "etc" / "gone")
    assert (oct(st.st_mode), st.st_rdev, st.st_uid, st.st_gid) == (oct(0o020000), 0, 0, 0)  # char 0/0, mode 0
    for d in ("opt", "var/lib", "etc/sub"):
        assert os.getxattr(mnt / "l1" / d, "trusted.overlay.opaque") == b"y"
    assert "trusted.overlay.opaque" not in os.listxattr(mnt / "l1" / "etc")

    merged = mnt / "merged"
    merged.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={mnt / 'l1'}:{mnt / 'l0'}",
                    str(merged)], check=True)
    mounted.append(merged)
    assert sorted(os.listdir(merged / "etc")) == ["keep", "sub"]
    assert os.listdir(merged / "opt") == ["new"]
    assert os.listdir(merged / "var" / "lib") == []
    assert (merged / "srv" / "old").read_text() == "again"
    assert os.listdir(merged / "etc" / "sub") == ["n"]

    # What overlayfs itself writes for a deletion: the same char 0/0, mode 0, root-owned.
    up, work, m2 = mnt / "upper", mnt / "work", mnt / "m2"
    for d in (up, work, m2):
        d.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={mnt / 'l0'},upperdir={up},workdir={work}", str(m2)], check=True)
    mounted.append(m2)
    os.unlink(m2 / "etc" / "gone")
    shutil.rmtree(m2 / "opt")
    (m2 / "opt").mkdir()
    (m2 / "opt" / "fresh").write_text("f")
    shutil.rmtree(m2 / "var" / "lib")
    kst = os.lstat(up / "etc" / "gone")
    assert (kst.st_mode, kst.st_rdev, kst.st_uid, kst.st_gid) == (st.st_mode, 0, 0, 0)

    # Round trip on the kernel-made upper dir: overlay dir → OCI tar → overlay tar → GNU tar → OCI tar.
    umount(m2)
    mounted.remove(m2)
    buf = io.BytesIO()
    d1 = tarball.oci_tar_from_overlay_dir(up, buf)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        oci_names = tf.getnames()
    assert {"etc/.wh.gone", "opt/.wh..wh..opq", "var/.wh.lib"} <= set(oci_names)
    assert oci_names.index("opt/.wh..wh..opq") == oci_names.index("opt") + 1
    (layer,) = tarball.from_oci_layout(layout_of_oci_tar(tmp_path / "layout", buf.getvalue()))
    extract(layer.path, mnt / "again")
    assert tarball.oci_tar_from_overlay_dir(mnt / "again", io.BytesIO()) == d1


# ---- from_overlay_tar ----------------------------------------------------------------------

GNU_TAR_OVERLAY = ["tar", "--xattrs", "--xattrs-include=trusted.overlay.*", "--xattrs-include=security.capability",
                   "--numeric-owner", "--format=posix", "-cf"]  # + OUT -C DIR . (what a host runs)
CAP = b"\x01\x00\x00\x02\x00\x20\x00\x00" + bytes(12)  # vfs_cap_data v2, effective, CAP_NET_BIND_SERVICE


def gnu_tar_overlay(src: Path, out: Path) -> Path:
    subprocess.run([*GNU_TAR_OVERLAY, str(out), "-C", str(src), "."], check=True)
    return out


def upper_tar(rows: list[tuple]) -> bytes:
    """A tar shaped like GNU tar 1.34's of an upper dir. rows: (name, kind, extra, pax, mode, uid);
    kind: f d l h c (c = whiteout 0/0); pax: extra PAX records (mtime, SCHILY.xattr.*)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tf:
        for row in rows:
            name, kind, extra, pax, mode, uid = (*row, *[None] * (6 - len(row)))
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_600_000_000
            ti.mode = mode if mode is not None else {"d": 0o755, "c": 0, "l": 0o777}.get(kind, 0o644)
            ti.uid = ti.gid = uid or 0
            ti.pax_headers = {"atime": "1.5", "ctime": "2.5", **(pax or {})}
            data = None
            if kind == "f":
                data = (extra or "").encode()
                ti.size = len(data)
            else:
                ti.type = {"d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE, "h": tarfile.LNKTYPE, "c": tarfile.CHRTYPE}[kind]
                ti.linkname = extra or ""
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


ORIGIN = {"SCHILY.xattr.trusted.overlay.origin": "\x00\udcfb!\x00\x01"}
UPPER = [
    ("./", "d", None, {"SCHILY.xattr.trusted.overlay.impure": "y", "SCHILY.xattr.trusted.overlay.uuid": "u"}),
    ("./z-new", "f", "new", {"mtime": "1700000000.999999999"}),  # a float would say ...001
    ("./etc", "d", None, {"SCHILY.xattr.trusted.overlay.impure": "y", **ORIGIN}),
    ("./etc/conf", "f", "changed", {**ORIGIN, "SCHILY.xattr.user.note": "machine noise"}),
    ("./etc/gone", "c"),
    ("./etc/gone2", "h", "./etc/gone"),  # overlayfs shares one whiteout inode: a hard link in the tar
    ("./opt", "d", None, {OPQ: "y"}, 0o711),
    ("./opt/x", "f", "x"),
    ("./var", "d", None, {"SCHILY.xattr.user.overlay.opaque": "y"}),  # userxattr mounts
    ("./srv", "d", None, {OPQ: "x"}),  # not "y": not opaque
    ("./srv/b-first", "f", "data", {"SCHILY.xattr.security.capability": CAP.decode("utf-8", "surrogateescape")}),
    ("./srv/a-second", "h", "./srv/b-first"),  # sorts before the member with the data
    ("./srv/l", "l", "b-first"),
]


def test_overlay_tar_is_read_like_the_upper_dir(tmp_path):
    src = tmp_path / "upper.tar"
    src.write_bytes(upper_tar(UPPER))
    layer = tarball.from_overlay_tar(src)
    assert names(layer.path) == ["etc/", "etc/gone", "etc/gone2", "etc/conf", "opt/", "opt/x", "srv/",
                                 "srv/a-second", "srv/b-first", "srv/l", "var/", "z-new"]
    m = members(layer.path)
    for w in ("etc/gone", "etc/gone2"):  # each whiteout its own char device, never a hard link
        assert m[w].ischr() and (m[w].devmajor, m[w].devminor, m[w].mode) == (0, 0, 0)
    assert m["opt"].pax_headers == {OPQ: "y"} and m["opt"].mode == 0o711
    assert m["var"].pax_headers == {OPQ: "y"}
    assert m["srv"].pax_headers == {} and m["etc"].pax_headers == {} and m["etc/conf"].pax_headers == {}
    assert m["srv/a-second"].isreg() and m["srv/b-first"].islnk() and m["srv/b-first"].linkname == "srv/a-second"
    assert m["srv/a-second"].pax_headers == {"SCHILY.xattr.security.capability": CAP.decode("utf-8", "surrogateescape")}
    assert m["z-new"].mtime == 1_700_000_000 and "mtime" not in m["z-new"].pax_headers
    with tarfile.open(tarball.cache_dir() / "layers" / f"{layer.sha256}.tar") as tf:
        assert tf.extractfile("srv/a-second").read() == b"data"
    # cached by the tar's identity; the DiffID is that of the OCI form
    assert tarball.from_overlay_tar(src) == layer
    (again,) = tarball.from_oci_layout(oci_layout(tmp_path / "layout", [oci_form(layer)]))
    assert again == layer


def oci_form(layer: Layer) -> bytes:
    """The layer's OCI-form tar, as export writes it (checked against its DiffID)."""
    out = tarball._Sink(io.BytesIO())
    tarball._oci_from_layer(layer, out)
    return out.out.getvalue()


@pytest.mark.parametrize("xattr", ["trusted.overlay.redirect", "trusted.overlay.metacopy", "user.overlay.redirect"])
def test_overlay_tar_refuses_redirect_and_metacopy(tmp_path, xattr):
    src = tmp_path / "upper.tar"
    src.write_bytes(upper_tar([("./", "d"), ("./a", "d", None, {f"SCHILY.xattr.{xattr}": "/b"})]))
    with pytest.raises(ValueError, match="redirect_dir or metacopy"):
        tarball.from_overlay_tar(src)


def test_overlay_tar_bad_input(tmp_path):
    src = tmp_path / "upper.tar"
    src.write_bytes(upper_tar([("./", "d"), ("./a", "h", "./nowhere")]))
    with pytest.raises(ValueError, match="not an earlier entry"):
        tarball.from_overlay_tar(src)
    src.write_bytes(b"not a tar" * 100)
    with pytest.raises(ValueError, match="not a readable archive|truncated"):
        tarball.from_overlay_tar(src)
    with pytest.raises(ValueError, match="does not exist"):
        tarball.from_overlay_tar(tmp_path / "nope.tar")
    with pytest.raises(ValueError, match="not a file"):
        tarball.from_overlay_tar(tmp_path)


def test_overlay_tar_of_a_plain_tree_matches_the_directory(tmp_path):
    src = make_tree(tmp_path / "tree")
    (src / "sub" / "deep").chmod(0o700)
    os.utime(src / "a.txt", ns=(0, 1_700_000_000_999_999_999))
    layer = tarball.from_overlay_tar(gnu_tar_overlay(src, tmp_path / "tree.tar"))
    assert layer.diff_id == tarball.oci_tar_from_overlay_dir(src, io.BytesIO())


@as_root
def test_overlay_tar_of_a_real_upper_dir_equals_the_directory_and_round_trips(tmp_path, tmpfs):
    mnt, mounted = tmpfs
    lower, up, work, m = mnt / "lower", mnt / "upper", mnt / "work", mnt / "merged"
    for d in (lower / "d" / "sub", up, work, m):
        d.mkdir(parents=True)
    for name in ("keep", "mod.txt", "gone", "gone2", "perm.txt", "owned.txt", "d/old", "d/sub/x"):
        (lower / name).write_text(name)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={up},workdir={work}",
                    str(m)], check=True)
    mounted.append(m)
    (m / "new").write_text("new\n")
    os.utime(m / "new", ns=(0, 1_700_000_000_999_999_999))  # as a float: 1700000001.0
    with open(m / "mod.txt", "a") as f:
        f.write(" modified")
    os.unlink(m / "gone")
    os.unlink(m / "gone2")  # shares the whiteout inode with gone
    shutil.rmtree(m / "d")
    (m / "d").mkdir(mode=0o750)
    (m / "d" / "fresh").write_text("f")
    os.symlink("mod.txt", m / "link")
    os.link(m / "new", m / "hard")
    os.chmod(m / "perm.txt", 0o600)
    os.chown(m / "owned.txt", 123, 456)
    (m / os.fsdecode(b"caf\xe9")).write_text("latin-1 name")
    os.setxattr(m / "new", "security.capability", CAP)
    os.mkfifo(m / "fifo")
    umount(m)
    mounted.remove(m)
    assert os.lstat(up / "gone").st_nlink > 1 and os.getxattr(up / "d", "trusted.overlay.opaque") == b"y"

    tar = gnu_tar_overlay(up, tmp_path / "upper.tar")
    with tarfile.open(tar, encoding="utf-8", errors="surrogateescape") as tf:
        pax = {k for mem in tf.getmembers() for k in mem.pax_headers}
    assert "SCHILY.xattr.trusted.overlay.origin" in pax  # overlayfs bookkeeping that must be dropped
    layer = tarball.from_overlay_tar(tar)
    assert layer.diff_id == tarball.oci_tar_from_overlay_dir(up, io.BytesIO())
    got = members(layer.path)
    assert got["gone"].ischr() and got["gone2"].ischr() and got["d"].pax_headers == {OPQ: "y"}
    assert (got["owned.txt"].uid, got["owned.txt"].gid, got["perm.txt"].mode) == (123, 456, 0o600)
    assert got["hard"].mtime == 1_700_000_000 and got["new"].islnk() and got["new"].linkname == "hard"

    # The shipped overlay form, extracted by GNU tar as a host does, reads back as the same layer.
    extract(layer.path, mnt / "shipped")
    assert os.getxattr(mnt / "shipped" / "d", "trusted.overlay.opaque") == b"y"
    assert tarball.oci_tar_from_overlay_dir(mnt / "shipped", io.BytesIO()) == layer.diff_id
    again = tarball.from_overlay_tar(gnu_tar_overlay(mnt / "shipped", tmp_path / "again.tar"))
    assert (again.diff_id, again.sha256) == (layer.diff_id, layer.sha256)
