"""The test fleet's two userlands (conftest.FLEET: bookworm's util-linux 2.38 and OpenSSH 9.2,
trixie's util-linux 2.41 with the new mount API, OpenSSH 10 and no python3), and the hosts'
non-root users: lamina (sudo without a password), lampw (sudo with a password) and nosudo.

Every other integration test runs on the same mixed fleet; these pin what differs."""

from __future__ import annotations

import json
import re

from test_engine import hosts, lamina  # noqa: F401  (fixture)

from lamina import lab as labmod

DEMO_TARGETS = ("/srv/demo/merged", "/mnt/demo-shared")


def _by_userland(lab) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"bookworm": [], "trixie": []}
    for h in lab.hosts:
        out["trixie" if labmod.host(h).lower != "/" else "bookworm"].append(h)
    return out


def _as(user: str) -> dict[str, str]:
    return {"LAMINA_LAB_USER": user}


def test_the_fleet_mixes_two_userlands_and_trixie_has_no_python(lab):
    fleet = _by_userland(lab)
    assert len(fleet["bookworm"]) == 2 and len(fleet["trixie"]) == 1, fleet
    for userland, util_linux, openssh in (("bookworm", "2.38", "OpenSSH_9"), ("trixie", "2.41", "OpenSSH_10")):
        for h in fleet[userland]:
            out = lab.run(h, "mount -V; ssh -V 2>&1; command -v python3 || echo no-python3")
            assert f"util-linux {util_linux}" in out.stdout and openssh in out.stdout, (h, out.stdout)
            # lamina's host commands (and testinfra's) must work without python3: trixie has none
            assert ("no-python3" in out.stdout) == (userland == "trixie"), (h, out.stdout)


def test_a_300_byte_lower_stack_mounts_on_trixie_where_plain_mount_fails(hosts, tmp_path):  # noqa: F811
    lab = hosts
    (host,) = _by_userland(lab)["trixie"]
    lowers = [f"/srv/a-rather-long-lower-directory-name-to-pass-the-new-api-limit-{i:02d}" for i in range(4)]
    option = ":".join(lowers)
    assert len(option) > 256
    prep = " && ".join(f"mkdir -p {d} && echo {i} > {d}/f{i}" for i, d in enumerate(lowers))
    assert lab.run(host, prep).returncode == 0
    # the trap: util-linux 2.41 refuses this lowerdir= through the new mount API (rc 32)
    bare = lab.run(host, f"mkdir -p /srv/bu /srv/bw /srv/bm && mount -t overlay -o lowerdir={option},"
                         "upperdir=/srv/bu,workdir=/srv/bw bare /srv/bm")
    assert bare.returncode == 32, bare
    spec = tmp_path / "long.yml"
    spec.write_text("overlays:\n  long:\n    lower: [" + ", ".join(lowers) + "]\n"
                    "    upper: /srv/long/upper\n    work: /srv/long/work\n    target: /srv/long/merged\n")
    out = lamina("apply", "-i", str(lab.inventory), "--limit", host, str(spec)).stdout
    assert out.splitlines()[-1] == f"{host}: 2 changed, 0 unchanged", out  # the overlay, its boot script
    assert lab.run(host, "cat /srv/long/merged/f0 /srv/long/merged/f3").stdout == "0\n3\n"
    again = lamina("apply", "-i", str(lab.inventory), "--limit", host, str(spec)).stdout
    assert again.strip() == f"{host}: 0 changed, 1 unchanged"  # boot files are checked, not listed


def test_inspect_says_how_a_deep_image_is_mounted_on_each_userland(hosts, tmp_path):  # noqa: F811
    """45 layers: a lowerdir= of short links over 255 bytes. trixie mounts it through mount(2)'s
    data page, bookworm's 2.38 does anyway; inspect says which, per host."""
    lab = hosts
    (tmp_path / "files").mkdir()
    steps = []
    for i in range(45):
        (tmp_path / "files" / f"f{i}").write_text(f"{i}\n")
        steps.append(f"      - copy: {{src: f{i}, dest: /f{i}}}\n")
    spec = tmp_path / "deep.yml"
    spec.write_text("images:\n  deep:\n    steps:\n" + "".join(steps) + "containers:\n  deep: {image: deep}\n")
    lamina("apply", "-i", str(lab.inventory), str(spec))
    records = json.loads(lamina("inspect", "-i", str(lab.inventory), "deep", str(spec)).stdout)
    fleet = _by_userland(lab)
    for r in records:
        assert r["State"]["Status"] == "mounted" and len(r["RootFS"]["Layers"]) == 45
        legacy = "mount(2) data (LIBMOUNT_FORCE_MOUNT2=always, util-linux 2.41" in r["MountForm"]
        assert legacy == (r["Host"] in fleet["trixie"]), r["MountForm"]
        assert lab.run(r["Host"], "cat /var/lib/lamina/containers/deep/merged/f0 "
                                  "/var/lib/lamina/containers/deep/merged/f44").stdout == "0\n44\n"


def test_the_demo_converges_through_sudo_as_a_non_root_user(hosts):  # noqa: F811
    lab = hosts
    inv = str(lab.inventory)
    refused = lamina("plan", "-i", inv, check=1, env=_as("lamina")).stdout.splitlines()
    assert [re.sub(r"\(uid \d+\)", "(uid N)", line) for line in refused] == [
        f"{h}: FAILED: the commands run as lamina (uid N), not root: lamina mounts and owns root-only state;"
        " connect as root or use --sudo (pyinfra: _sudo)" for h in lab.hosts]
    first = json.loads(lamina("apply", "-i", inv, "--sudo", "--json", env=_as("lamina")).stdout)["hosts"]
    assert all(r["changed"] and not r["failed"] for r in first.values()), first
    marks = {h: lab.mark(h) for h in lab.hosts}
    second = json.loads(lamina("apply", "-i", inv, "--sudo", "--json", env=_as("lamina")).stdout)["hosts"]
    assert all(not r["changed"] and r["unchanged"] for r in second.values()), second
    assert {h: lab.exec_requests(h, marks[h]) for h in lab.hosts} == {h: ["command"] for h in lab.hosts}
    for h in lab.hosts:
        assert all(lab.run(h, f"mountpoint -q {t}").returncode == 0 for t in DEMO_TARGETS)
    lamina("verify", "-i", inv, "--sudo", "-q", env=_as("lamina"))


def test_a_user_without_sudo_gets_one_clear_error_per_host_and_nothing_changes(hosts):  # noqa: F811
    lab = hosts
    out = lamina("apply", "-i", str(lab.inventory), "--sudo", check=1, env=_as("nosudo"))
    assert out.stdout.splitlines() == [
        f"{h}: FAILED: sudo: a password is required (lamina runs `sudo -n`: the user needs sudo without a"
        " password here, or give pyinfra's _sudo_password in the inventory)" for h in lab.hosts], out.stdout
    assert "Traceback" not in out.stderr
    for h in lab.hosts:
        assert all(lab.run(h, f"mountpoint -q {t}").returncode != 0 for t in DEMO_TARGETS)
        assert lab.run(h, "ls -A /var/lib/lamina").stdout == ""


def test_password_sudo_goes_through_pyinfra_with_the_inventory_password(hosts):  # noqa: F811
    lab = hosts
    inv = str(lab.inventory)
    first = json.loads(lamina("apply", "-i", inv, "--sudo", "--json", env=_as("lampw")).stdout)["hosts"]
    assert all(r["changed"] and not r["failed"] for r in first.values()), first
    second = json.loads(lamina("apply", "-i", inv, "--sudo", "--json", env=_as("lampw")).stdout)["hosts"]
    assert all(not r["changed"] and not r["failed"] for r in second.values()), second
    for h in lab.hosts:
        assert all(lab.run(h, f"mountpoint -q {t}").returncode == 0 for t in DEMO_TARGETS)
