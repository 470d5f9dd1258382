"""Images and containers on the test hosts: shared layers, no re-shipping, deep stacks,
crash safety while shipping, gc, inspect."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_engine import CLEAN, DEMO, REPO, USERLANDS, as_test_user, changed_objects, changes, demo_copy, lamina, on

from lamina.materialize import command

C = "/var/lib/lamina/containers"


@pytest.fixture
def hosts(lab, demo_rootfs):
    for h in lab.hosts:
        assert lab.run(h, CLEAN).returncode == 0
    return lab


def inspect(lab, host: str, container: str, spec: Path | None = None) -> dict:
    out = lamina("inspect", "-i", str(lab.inventory), container, *([str(spec)] if spec else []), "--host", host)
    (record,) = json.loads(out.stdout)
    return record


def test_containers_share_layers_and_keep_writes_apart(hosts):
    lab = hosts
    changes(lab)
    h = lab.hosts[0]
    web1, web2 = inspect(lab, h, "web1"), inspect(lab, h, "web2")
    assert web1["GraphDriver"]["Data"]["LowerDir"] == web2["GraphDriver"]["Data"]["LowerDir"]
    assert web1["RootFS"]["Layers"] == web2["RootFS"]["Layers"] and len(web1["RootFS"]["Layers"]) == 3
    assert web1["ImageID"] == web2["ImageID"] and web1["State"]["Status"] == "mounted"
    assert [m["Destination"] for m in web1["Mounts"]] == ["/data", "/shared"]
    lowest = web1["GraphDriver"]["Data"]["LowerDir"].split(":")[-1]
    # the same inode through both containers as in the layer itself: nothing was copied
    # (each overlay reports its own st_dev, but passes the lower file's inode number through)
    inodes = lab.run(h, f"stat -c %i {lowest}/bin/busybox {C}/web1/merged/bin/busybox "
                        f"{C}/web2/merged/bin/busybox").stdout.split()
    assert len(inodes) == 3 and len(set(inodes)) == 1, inodes
    assert lab.run(h, f"cat {C}/web1/merged/etc/motd").stdout == "welcome to the demo image\n"
    assert lab.run(h, f"test -e {C}/web1/merged/bin/false || echo gone").stdout == "gone\n"  # whiteout
    lab.run(h, f"echo mine > {C}/web1/merged/tmp/note && rm {C}/web1/merged/etc/passwd")
    assert lab.run(h, f"cat {C}/web2/merged/tmp/note").returncode != 0
    assert lab.run(h, f"cat {C}/web2/merged/etc/passwd").returncode == 0
    assert lab.run(h, f"cat {lowest}/etc/passwd").returncode == 0  # layers are never written
    assert lab.run(h, f"stat -c %F {C}/web1/upper/etc/passwd").stdout == "character special file\n"


def test_reapply_ships_no_layer_and_runs_no_step(hosts):
    lab = hosts
    changes(lab)
    store = "ls -l --time-style=+%s.%N /var/lib/lamina/layers /var/lib/lamina/cache /var/lib/lamina/l"
    before = {h: lab.run(h, store).stdout for h in lab.hosts}
    marks = {h: lab.mark(h) for h in lab.hosts}
    assert changed_objects(changes(lab)) == {h: [] for h in lab.hosts}
    for h in lab.hosts:
        requests = lab.exec_requests(h, marks[h])
        assert not [r for r in requests if "sftp" in r] and len(requests) <= 2, requests
        assert lab.run(h, store).stdout == before[h]  # no layer or cache entry touched


def test_changed_step_rebuilds_only_from_there(hosts, tmp_path):
    lab = hosts
    changes(lab)
    h = lab.hosts[0]
    spec = demo_copy(tmp_path, DEMO.read_text().replace("welcome to the demo image", "welcome, v2"))
    report = changes(lab, "--limit", h, spec=spec)
    assert changed_objects(report)[h] == ["run images.web.steps[1]", "container web1", "container web2"] + \
        [f"mount {C}/web{i}/merged/{m}" for i in (1, 2) for m in ("data", "shared")] + ["boot mounts"]
    assert lab.run(h, f"cat {C}/web2/merged/etc/motd").stdout == "welcome, v2\n"


def deep_spec(tmp_path: Path, n: int) -> Path:
    for i in range(n):
        d = tmp_path / "files" / f"l{i}"
        d.mkdir(parents=True)
        (d / "top").write_text(f"layer {i}\n")
        (d / f"only-{i}").write_text("x")
    steps = "\n".join(f"      - copy: {{src: l{i}, dest: /}}" for i in range(n))
    spec = tmp_path / "deep.yml"
    spec.write_text(f"images:\n  deep:\n    steps:\n{steps}\ncontainers:\n  deep: {{image: deep}}\n")
    return spec


@pytest.mark.parametrize("userland", USERLANDS)
@pytest.mark.parametrize("n", [128, 500])
def test_deep_stack_mounts_and_verifies(hosts, tmp_path, n, userland):
    lab = hosts
    h = on(lab.hosts, userland)
    spec = deep_spec(tmp_path, n)
    lamina("apply", "-i", str(lab.inventory), str(spec), "--limit", h)
    merged = f"{C}/deep/merged"
    assert lab.run(h, f"cat {merged}/top").stdout == f"layer {n - 1}\n"  # the highest layer wins
    assert lab.run(h, f"ls {merged} | grep -c only-").stdout == f"{n}\n"
    record = inspect(lab, h, "deep", spec)
    assert len(record["RootFS"]["Layers"]) == n and record["State"]["UpToDate"]
    lamina("verify", "-i", str(lab.inventory), str(spec), "--limit", h, "-q")
    assert changed_objects(changes(lab, "--limit", h, spec=spec)) == {h: []}


def test_501_layers_is_a_validation_error(tmp_path):
    spec = deep_spec(tmp_path, 501)
    out = lamina("validate", str(spec), check=2)
    assert "images.deep: 501 layers; overlayfs stacks at most 500" in out.stderr


def test_killed_while_shipping_then_rerun_converges(hosts, tmp_path):
    lab = hosts
    h = lab.hosts[0]
    big = tmp_path / "files" / "big"
    big.mkdir(parents=True)
    with open(big / "blob", "wb") as f:
        for _ in range(192):
            f.write(os.urandom(1 << 20))
    spec = tmp_path / "big.yml"
    spec.write_text("images:\n  big:\n    steps:\n      - copy: {src: big, dest: /data}\n"
                    "containers:\n  big: {image: big}\n")
    lamina("plan", "-i", str(lab.inventory), str(spec), "--limit", h)  # builds the layer tar (cached)
    args, env = as_test_user(("apply", "-i", str(lab.inventory), str(spec), "--limit", h), None)
    proc = subprocess.Popen([sys.executable, "-m", "lamina.cli", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, env={**os.environ, **env})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if lab.run(h, "ls /var/lib/lamina/staging 2>/dev/null").stdout.strip():
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the upload never started")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # no partial layer under a final name: every layer present is complete and sealed
    listing = lab.run(h, "ls /var/lib/lamina/layers").stdout.split()
    if listing:
        assert lab.run(h, command("checkseal", "/var/lib/lamina", *listing)).stdout == ""
    report = changes(lab, "--limit", h, spec=spec)
    assert not report[h]["failed"]
    local = subprocess.run(["sha256sum", str(big / "blob")], capture_output=True, text=True).stdout.split()[0]
    remote = lab.run(h, f"sha256sum {C}/big/merged/data/blob").stdout.split()[0]
    assert local == remote
    assert lab.run(h, "ls -A /var/lib/lamina/staging").stdout == ""  # no debris after the re-run
    assert changed_objects(changes(lab, "--limit", h, spec=spec)) == {h: []}


@pytest.mark.parametrize("userland", USERLANDS)
def test_a_stream_cut_between_two_members_stores_nothing(hosts, tmp_path, userland):
    """GNU tar exits 0 on a layer tar cut where a member starts: what tells the host the layer
    is whole is the line the controller sends after it (materialize.shipped), and without it
    ship.sh stores nothing; with it, the layer is committed and sealed."""
    import hashlib
    import io
    import tarfile

    from lamina.materialize import RECORD

    lab = hosts
    h = on(lab.hosts, userland)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(3):
            data = os.urandom(3000 + i)
            info = tarfile.TarInfo(f"f{i}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    layer = buf.getvalue()
    hex_ = hashlib.sha256(layer).hexdigest()
    last = tarfile.open(fileobj=io.BytesIO(layer)).getmembers()[-1].offset
    pad = bytes(-len(layer) % RECORD)
    ship = lab.ssh_argv(h, command("ship", "/var/lib/lamina", hex_, str(len(layer))))
    for cut in (layer[:last], layer + pad, layer + pad + b"lamina-commit " + b"0" * 64 + b"\n"):
        done = subprocess.run(ship, input=cut, capture_output=True, timeout=60)
        assert done.returncode != 0 and b"nothing stored" in done.stderr, done.stderr
        assert lab.run(h, "ls -A /var/lib/lamina/layers /var/lib/lamina/staging").stdout.split() == \
            ["/var/lib/lamina/layers:", "/var/lib/lamina/staging:"]
    done = subprocess.run(ship, input=layer + pad + f"lamina-commit {hex_}\n".encode(), capture_output=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.decode().startswith(f"LAYER {hex_} "), done.stderr
    assert lab.run(h, f"ls /var/lib/lamina/layers/{hex_}/diff").stdout.split() == ["f0", "f1", "f2"]
    assert lab.run(h, command("checkseal", "/var/lib/lamina", hex_)).stdout == ""


@pytest.mark.parametrize("userland", USERLANDS)
def test_layers_follow_one_another_in_one_stream_and_a_cut_one_is_not_stored(hosts, userland):
    """ship.sh takes several layers in one session: `read` takes each commit line and leaves
    the next tar whole. A stream cut inside the second layer keeps the first, stores nothing
    of the second; the whole stream stores both."""
    import hashlib
    import io
    import tarfile

    from lamina.materialize import RECORD

    lab = hosts
    h = on(lab.hosts, userland)

    def layer(n: int) -> tuple[bytes, str]:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for i in range(3):
                data = os.urandom(5000 + 700 * i + n)
                info = tarfile.TarInfo(f"l{n}/f{i}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        tar = buf.getvalue()
        return tar + bytes(-len(tar) % RECORD), hashlib.sha256(tar).hexdigest()

    (one, hex1), (two, hex2) = layer(1), layer(2)
    ship = lab.ssh_argv(h, command("ship", "/var/lib/lamina", hex1, str(len(one)), hex2, str(len(two))))
    first = one + f"lamina-commit {hex1}\n".encode()
    between = tarfile.open(fileobj=io.BytesIO(two)).getmembers()[-1].offset
    for cut in (two[:len(two) // 2], two[:between]):  # inside a member (tar fails), between two (it does not)
        done = subprocess.run(ship, input=first + cut, capture_output=True, timeout=60)
        assert done.returncode != 0, done.stderr
        assert lab.run(h, "ls -A /var/lib/lamina/layers /var/lib/lamina/staging").stdout.split() == \
            ["/var/lib/lamina/layers:", hex1, "/var/lib/lamina/staging:"]
        assert lab.run(h, f"rm -rf /var/lib/lamina/layers/{hex1} /var/lib/lamina/l/*").returncode == 0
    assert f"layer {hex2}: the stream ended".encode() in done.stderr, done.stderr
    done = subprocess.run(ship, input=first + two + f"lamina-commit {hex2}\n".encode(), capture_output=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert [line.split()[1] for line in done.stdout.decode().splitlines()] == [hex1, hex2]
    for n, hex_ in ((1, hex1), (2, hex2)):
        assert lab.run(h, f"ls /var/lib/lamina/layers/{hex_}/diff/l{n}").stdout.split() == ["f0", "f1", "f2"]
    assert lab.run(h, command("checkseal", "/var/lib/lamina", hex1, hex2)).stdout == ""


def test_gc_lists_then_removes_only_unused_layers(hosts, tmp_path):
    lab = hosts
    h = lab.hosts[0]
    changes(lab, "--limit", h)
    # web2 leaves the spec but stays mounted by hand: its layers are in use all the same
    text = DEMO.read_text()
    without_web = text[: text.index("  web:")] + "\ncontainers:\n  web1:\n    image: base\n"
    spec = demo_copy(tmp_path, without_web)
    out = lamina("gc", "-i", str(lab.inventory), str(spec), "--limit", h)
    assert out.stdout.strip().endswith(f"{h}: 0 to change, 0 unchanged"), out.stdout  # web2 still mounted
    lab.run(h, f"umount -R {C}/web2/merged && umount -R {C}/web1/merged")
    out = lamina("gc", "-i", str(lab.inventory), str(spec), "--limit", h)
    unused = [line for line in out.stdout.splitlines() if "not used by any image" in line]
    assert len(unused) == 2, out.stdout  # the copy layer and the run layer of image web
    before = lab.run(h, "ls /var/lib/lamina/layers").stdout.split()
    lamina("gc", "-i", str(lab.inventory), str(spec), "--limit", h, "--yes")
    after = lab.run(h, "ls /var/lib/lamina/layers").stdout.split()
    assert len(after) == len(before) - 2
    assert len(lab.run(h, "ls /var/lib/lamina/l").stdout.split()) == len(after)
    assert "not used" not in lamina("gc", "-i", str(lab.inventory), str(spec), "--limit", h).stdout


def test_container_absent_keeps_its_layer_unless_purged(hosts, tmp_path):
    lab = hosts
    h = lab.hosts[0]
    changes(lab, "--limit", h)
    lab.run(h, f"echo keep > {C}/web1/merged/root/note")
    text = DEMO.read_text().replace("  web1:\n    image: web\n", "  web1:\n    image: web\n    state: absent\n")
    spec = demo_copy(tmp_path, text)
    changes(lab, "--limit", h, spec=spec)
    assert lab.run(h, f"mountpoint -q {C}/web1/merged || cat {C}/web1/upper/root/note").stdout == "keep\n"
    spec.write_text(text.replace("    state: absent\n", "    state: absent\n    purge: true\n"))
    changes(lab, "--limit", h, spec=spec)
    assert lab.run(h, f"test -e {C}/web1 || echo gone").stdout == "gone\n"
    assert len(lab.run(h, "ls /var/lib/lamina/layers").stdout.split()) == 3  # image layers stay
    assert lab.run(h, f"cat {C}/web2/merged/etc/motd").returncode == 0


def test_run_step_failure_is_reported_and_nothing_is_left(hosts, tmp_path):
    lab = hosts
    h = lab.hosts[0]
    spec = demo_copy(tmp_path, DEMO.read_text().replace('rm /bin/false', 'exit 7'))
    out = lamina("apply", "-i", str(lab.inventory), str(spec), "--limit", h, check=1)
    assert f"{h}: FAILED: run step failed with exit code 7" in out.stdout, out.stdout
    assert lab.run(h, "ls -A /var/lib/lamina/staging; grep -c lamina-build /proc/self/mountinfo").stdout == "0\n"


def test_bad_image_inputs_are_located(tmp_path):
    spec = tmp_path / "s.yml"
    spec.write_text(textwrap.dedent("""\
        images:
          aa: {from: bb}
          bb: {from: aa}
          cc: {steps: [{copy: {src: nothere, dest: /x}}]}
          dd: {steps: [{run: "true", copy: {src: x, dest: /}}]}
        containers:
          web: {image: zz}
        """))
    err = lamina("validate", str(spec), check=2).stderr
    assert f"{spec}:2:14: images.aa.from: inheritance cycle aa -> bb -> aa" in err
    assert f"{spec}:5:16: images.dd.steps[0]: a step needs exactly one of copy, add, run (found copy, run)" in err
    assert f"{spec}:7:16: containers.web.image: no image 'zz' in the spec" in err
    spec.write_text("images:\n  cc: {steps: [{copy: {src: nothere, dest: /x}}]}\n")
    err = lamina("validate", str(spec), check=2).stderr
    assert f"{spec}:2:23: images.cc.steps[0].copy:" in err and "nothere" in err, err


def test_verify_catches_a_changed_layer_and_a_shadowed_file(hosts):
    lab = hosts
    changes(lab)
    ok = lamina("verify", "-i", str(lab.inventory), "-q")
    assert " passed" in ok.stdout and "failed" not in ok.stdout
    h = lab.hosts[2]
    lowest = inspect(lab, h, "web1")["GraphDriver"]["Data"]["LowerDir"].split(":")[-1]
    lab.run(h, f"echo tampered >> {lowest}/etc/group")
    bad = lamina("verify", "-i", str(lab.inventory), "-q", check=1).stdout
    assert f"{h}: layer {Path(lowest).parent.name[:12]}: content unchanged" in bad and "content changed" in bad
    lab.run(h, f"echo fake > /tmp/fake && mount --bind /tmp/fake {C}/web2/merged/etc/motd")
    bad = lamina("verify", "-i", str(lab.inventory), "-q", check=1).stdout
    assert f"etc/motd: {C}/web2/merged does not show" in bad


def test_committed_image_is_usable_by_specs_at_once(hosts, tmp_path, monkeypatch):
    lab = hosts
    h = lab.hosts[0]
    monkeypatch.setenv("LAMINA_IMAGES", str(tmp_path / "images"))
    changes(lab, "--limit", h)
    lab.run(h, f"echo snapshot > {C}/web1/merged/root/state && rm {C}/web1/merged/etc/motd")
    out = json.loads(lamina("commit", "-i", str(lab.inventory), "web1", "snap", "--host", h).stdout)
    assert out["From"] == "lamina:snap" and Path(out["Archive"]).is_file()
    committed = out["Layer"].removeprefix("sha256:")
    assert committed in lab.run(h, "ls /var/lib/lamina/layers").stdout  # on the host at once
    spec = tmp_path / "clone.yml"
    spec.write_text("images:\n  snap: {from: 'lamina:snap'}\ncontainers:\n  clone: {image: snap}\n")
    changes(lab, "--limit", h, spec=spec)
    assert lab.run(h, f"cat {C}/clone/merged/root/state").stdout == "snapshot\n"
    assert lab.run(h, f"test -e {C}/clone/merged/etc/motd || echo deleted").stdout == "deleted\n"
    assert lab.run(h, f"cat {C}/web1/merged/root/state").stdout == "snapshot\n"  # web1 runs on, unchanged


def test_the_state_after_storing_layers_is_what_a_fresh_read_finds(hosts):
    """converge.with_layers stands in for a second read of the host once the layers are
    stored: what it derives from the scripts' output must be what a read finds, field by
    field, and the comparison after it the same. First shipped and built layers; then a
    damaged layer (quarantined, shipped again) and a lost short link (relinked)."""
    from dataclasses import replace

    from lamina import converge, inventory, sshrun
    from lamina.diff import Host, diff
    from lamina.materialize import known, materialize
    from lamina.remote import OpenSSH
    from lamina.runner import host_plan

    lab = hosts
    h = lab.hosts[0]
    data = next(x.data for x in inventory.read(str(lab.inventory)) if x.name == h)
    plan = host_plan(h, data, [DEMO])

    def store_and_compare(remote, plan, actions):
        actual = converge.read(remote, plan, 60)  # takes the lock (the first time)
        todo = diff(plan, actual).materialize
        assert {m.action for m in todo} == actions
        replaced = frozenset(m.digest for m in todo if m.damaged)
        view = Host(plan, actual)
        stored = materialize(remote, plan, todo, view.names, known(view, plan.layers.values()))
        derived, fresh = converge.with_layers(actual, plan, stored), converge.read(remote, plan, 60)
        for field in ("layers", "links", "files", "staging", "damaged", "mounts", "paths"):
            assert getattr(derived, field) == getattr(fresh, field), field
        a, b = diff(plan, derived, replaced), diff(plan, fresh, replaced)
        assert a.changes and not a.errors and not a.materialize
        for part in a.__slots__:
            assert getattr(a, part) == getattr(b, part), part
        return fresh

    with sshrun.Connections.for_inventory(str(lab.inventory), [h], False) as conns:
        remote = OpenSSH(conns, h)
        try:
            stored = store_and_compare(remote, plan, {"ship", "build"})
            base, site = (ref.digest for ref in plan.images["web"].layers[:2])  # the archive, the copied site
            base_link = next(n for n, t in stored.links.items() if t == f"../layers/{base}/diff")
            assert lab.run(h, f"echo tampered >> /var/lib/lamina/layers/{site}/diff/srv/www/index.html && "
                              f"rm /var/lib/lamina/l/{base_link}").returncode == 0
            store_and_compare(remote, replace(plan, check_layers=True), {"ship", "relink"})
        finally:
            remote.close()
