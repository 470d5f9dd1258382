"""Pure parts of the mixed fleet and non-root hosts: fleet specs, the user the commands ran as,
sudo refusals, and how an overlay is mounted per util-linux version."""

from __future__ import annotations

import os
import pwd
import subprocess

import pytest

from lamina import diff, facts, lab, runner
from lamina.plan import HostPlan


def test_a_fleet_spec_is_one_userland_per_host():
    assert lab.fleet("bookworm:2,trixie:1") == ["bookworm", "bookworm", "trixie"]
    assert lab.fleet("trixie") == ["trixie"]
    for bad in ("bookworm:0", "Bookworm:1", "trixie:x", "../etc:1", "bookworm:1,,trixie:1", "a:99,b:1"):
        with pytest.raises(lab.LabError):
            lab.fleet(bad)


def test_the_fact_reads_the_user_and_a_non_root_user_is_one_clear_error():
    out = ["@@lamina-user", "uid=1001(lamina) gid=1001(lamina) groups=1001(lamina),27(sudo)", "@@lamina-end"]
    state = facts.parse(out)
    assert state.user == (1001, "lamina")
    result = diff.diff(HostPlan("/var/lib/lamina", ()), state)
    assert not result.changes and result.errors == [
        "the commands run as lamina (uid 1001), not root: lamina mounts and owns root-only state; connect as root"
        " or use --sudo (pyinfra: _sudo)"]
    root = facts.parse(["@@lamina-user", "uid=0(root) gid=0(root) groups=0(root)", "@@lamina-end"])
    assert root.user == (0, "root") and not diff.diff(HostPlan("/var/lib/lamina", ()), root).errors
    # what the command itself reads, as root (no `id` process) and as another user (`id` names it)
    as_root = subprocess.run(["sh", "-c", facts.command(HostPlan("/var/lib/lamina", ()))], capture_output=True,
                             text=True, check=True)
    assert facts.parse(as_root.stdout.splitlines()).user == (os.geteuid(), pwd.getpwuid(os.geteuid()).pw_name)
    if os.geteuid() == 0:
        nobody = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c",
                                 facts.command(HostPlan("/var/lib/lamina", ()))], capture_output=True, text=True,
                                check=True)
        assert facts.parse(nobody.stdout.splitlines()).user == (65534, pwd.getpwuid(65534).pw_name)
    # the effective user counts (a setuid shell), and a uid without a name is its number
    assert facts.parse(["@@lamina-user", "uid=1001(lamina) gid=1001 euid=0(root)", "@@lamina-end"]).user == (0, "root")
    assert facts.parse(["@@lamina-user", "uid=4242 gid=4242 groups=4242", "@@lamina-end"]).user == (4242, "4242")


def test_a_sudo_refusal_is_reported_not_retried():
    assert runner._sudo_refused("sudo: a password is required\n").startswith("sudo: a password is required (")
    assert runner._sudo_refused("lamina is not in the sudoers file.\nsudo: 1 incorrect password attempt\n")
    assert runner._sudo_refused("ssh: connect to host 10.0.0.1 port 22: No route to host\n") is None


@pytest.mark.parametrize(("util_linux", "legacy"), [((2, 38, 1), False), ((2, 39), True), ((2, 41, 5), True)])
def test_a_lower_stack_over_255_bytes_uses_mount2_from_util_linux_2_39(util_linux, legacy):
    long = diff.Lower(tuple(f"/srv/lower-{i:03d}" for i in range(30)), ":".join(f"/srv/lower-{i:03d}" for i in range(30)))
    short = diff.Lower(("/srv/a",), "/srv/a")
    state = facts.HostState(util_linux=util_linux)
    assert diff.legacy_mount(long, state) == legacy
    assert not diff.legacy_mount(short, state)
    assert ("LIBMOUNT_FORCE_MOUNT2=always" in diff.mount_form(long, state)) == legacy


def test_a_host_without_a_needed_command_is_told_which(tmp_path):
    """The fact's `command -v` loop run by a real sh with a PATH lacking flock and tar: the
    host is refused with their names; tar matters only to specs with images."""
    import shutil
    import subprocess

    from lamina.images import ImagePlan

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in set(facts.TOOLS) - {"flock", "tar"}:
        (bin_dir / tool).symlink_to(shutil.which(tool) or "/bin/true")
    line = next(x for x in facts.command(HostPlan("/var/lib/lamina", ())).splitlines() if "-missing" in x)
    out = subprocess.run(["/bin/sh", "-c", line + "; echo @@lamina-end"], capture_output=True, text=True,
                         env={"PATH": str(bin_dir)}, check=True).stdout
    state = facts.parse(out.splitlines())
    assert state.missing == ("flock", "tar")
    plain = diff.diff(HostPlan("/var/lib/lamina", ()), state)
    assert plain.errors == ["this host has no flock: lamina needs POSIX sh, coreutils and util-linux (and GNU tar"
                            " for images); install them"]
    with_images = diff.diff(HostPlan("/var/lib/lamina", (), {"app": ImagePlan("app", ())}), state)
    assert "this host has no flock, tar:" in with_images.errors[0]
    assert not diff.diff(HostPlan("/var/lib/lamina", ()), facts.parse(["@@lamina-missing", "@@lamina-end"])).errors
