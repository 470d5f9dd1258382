"""Plan vs host state, table-driven: raw mountinfo and path listings in, changes out."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest

from lamina import diff, facts, loader
from lamina.plan import MountWant, plan

SPEC = """\
volumes:
  data: {labels: {team: lab}}
overlays:
  web:
    lower: [/srv/l3, /srv/l2, /srv/l1]
    upper: /srv/up
    work: /srv/work
    target: /srv/merged
    mounts:
      - data:/data
      - /srv/share:/share:ro
      - {type: tmpfs, target: /scratch}
binds:
  share: {source: /srv/share, target: /mnt/share, read_only: true}
"""

BASE = """\
20 1 0:30 / / rw,relatime - overlay lab-root rw,lowerdir=/,upperdir=/x/up,workdir=/x/work
21 20 0:40 / /srv rw,relatime - tmpfs srv rw
22 20 0:41 / /var/lib/lamina rw,relatime - tmpfs lamina rw
23 20 0:42 / /mnt rw,relatime - tmpfs mnt rw
"""
OVERLAY = "30 21 0:50 / /srv/merged rw,relatime - overlay overlay rw,lowerdir={lower},upperdir=/srv/up,workdir=/srv/work\n"
INNER = """\
31 30 0:41 /volumes/data/_data /srv/merged/data rw,relatime - tmpfs lamina rw
32 30 0:40 /share /srv/merged/share ro,relatime - tmpfs srv rw
33 30 0:51 / /srv/merged/scratch rw,relatime - tmpfs tmpfs rw
"""
BIND = "34 23 0:40 /share /mnt/share ro,relatime - tmpfs srv rw\n"
CONVERGED = BASE + OVERLAY.format(lower="/srv/l3:/srv/l2:/srv/l1") + INNER + BIND

MODES = {"/var/lib/lamina": "700", "/var/lib/lamina/volumes": "700", "/var/lib/lamina/volumes/data": "700",
         "/srv/work": "700"}


@pytest.fixture(scope="module")
def host_plan(tmp_path_factory):
    p = tmp_path_factory.mktemp("spec") / "spec.yml"
    p.write_text(SPEC)
    return dataclasses.replace(plan(loader.load([p]).spec), boot=False)  # boot files: test_boot_files


def fact_output(host_plan, mountinfo: str, missing=(), modes=None, files=None, resolved=None) -> list[str]:
    """What the fact command prints on a host with these mounts and paths."""
    modes = {**MODES, **(modes or {})}
    paths = host_plan.paths()
    lines = ["@@lamina-mountinfo", *mountinfo.splitlines(), "@@lamina-util-linux",
             "mount from util-linux 2.38.1 (libmount 2.38.1: selinux)",
             "@@lamina-asked", *paths, "@@lamina-resolved", *((resolved or {}).get(p, p) for p in paths),
             "@@lamina-stat"]
    lines += [f"{p}\tdirectory\t{modes.get(p, '755')}\t0\t0" for p in paths if p not in missing]
    lines.append("@@lamina-files")
    default_files = {"/var/lib/lamina/volumes/data/labels.json": '{"team": "lab"}'}
    for path, content in (default_files if files is None else files).items():
        lines += [f"==> {path} <==", content, ""]  # as `head -n 1 FILE...` prints them
    lines.append("@@lamina-end")
    return lines


def run(host_plan, mountinfo=CONVERGED, **kw) -> diff.Result:
    return diff.diff(host_plan, facts.parse(fact_output(host_plan, mountinfo, **kw)))


def reasons(result: diff.Result) -> dict[str, list[str]]:
    return {c.key: c.reasons for c in result.changes}


def test_converged_host_has_nothing_to_do(host_plan):
    result = run(host_plan)
    assert result.errors == [] and result.changes == []
    assert len(result.unchanged) == len(host_plan.items) == 6


def test_first_converge_creates_and_mounts_everything_in_order(host_plan):
    result = run(host_plan, BASE, missing=set(host_plan.paths()), files={})
    assert result.errors == []
    script = diff.script(result)
    order = [line.split(" -- ")[-1] for line in script.splitlines() if line.startswith("mount ")]
    assert order == ["overlay /srv/merged", "/srv/share /mnt/share",
                     "/var/lib/lamina/volumes/data/_data /srv/merged/data",
                     "/srv/share /srv/merged/share", "tmpfs /srv/merged/scratch"]
    # every directory outside the new overlay is made before the first mount, in one mkdir
    # (parents first), then given its mode
    first_mount = script.index("\nmount ")
    mkdirs = [line for line in script.splitlines() if line.startswith("mkdir -p -m 700 -- ")]
    assert len(mkdirs) == 1 and script.index(mkdirs[0]) < first_mount
    made = mkdirs[0].split(" -- ")[1].split()
    assert made.index("/var/lib/lamina") < made.index("/var/lib/lamina/volumes") and "/srv/work" in made
    modes = {line.split()[1]: line.split(" -- ")[1].split() for line in script.splitlines() if line.startswith("chmod")}
    assert "/srv/work" not in [p for ps in modes.values() for p in ps]  # a work dir stays 700
    assert "/srv/up" in modes["755"] and "/var/lib/lamina/volumes/data/_data" in modes["755"]
    assert max(script.index(f"chmod {m} ") for m in modes) < first_mount
    # the targets inside the merged tree are made after the overlay is mounted, in one mkdir
    inner = [line for line in script.splitlines() if line.startswith("mkdir -p -- ")]
    assert inner == ["mkdir -p -- /srv/merged/data /srv/merged/share /srv/merged/scratch"]
    assert script.index(inner[0]) > script.index("overlay /srv/merged")
    assert "printf '%s\\n' '{\"team\": \"lab\"}' > /var/lib/lamina/volumes/data/labels.json" in script


def test_wrong_lower_stack_is_umount_and_mount_with_inner_mounts_redone(host_plan):
    mi = BASE + OVERLAY.format(lower="/srv/l1:/srv/l2") + INNER + BIND
    result = run(host_plan, mi)
    assert reasons(result)["overlay /srv/merged"] == [
        "lower stack differs: want [/srv/l3, /srv/l2, /srv/l1], found [/srv/l1, /srv/l2]"]
    assert set(reasons(result)) == {"overlay /srv/merged", "mount /srv/merged/data",
                                    "mount /srv/merged/share", "mount /srv/merged/scratch"}
    lines = diff.script(result).splitlines()
    umounts = [line.split(" -- ")[1].split()[0] for line in lines if line.startswith("umount")]
    assert umounts[-1] == "/srv/merged" and len(umounts) == 4  # inner ones first
    assert "mount -t overlay -o lowerdir=/srv/l3:/srv/l2:/srv/l1,upperdir=/srv/up,workdir=/srv/work -- overlay /srv/merged" in lines
    assert not any("remount" in line for line in lines)  # a remount would change nothing (DESIGN §3)


def test_manually_unmounted_overlay_is_the_only_change(host_plan):
    mi = BASE + BIND  # `umount -R /srv/merged` took the inner mounts too
    r = reasons(run(host_plan, mi))
    assert r["overlay /srv/merged"] == ["not mounted"]
    assert "bind /mnt/share" not in r and "volume data" not in r


def test_unmounted_bind_is_the_only_change(host_plan):
    r = reasons(run(host_plan, CONVERGED.replace(BIND, "")))
    assert r == {"bind /mnt/share": ["not mounted"]}


def test_deleted_work_dir_is_recreated(host_plan):
    result = run(host_plan, missing={"/srv/work"})
    assert reasons(result) == {"overlay /srv/merged": ["missing /srv/work"]}
    assert "mkdir -p -m 700 -- /srv/work\n" in diff.script(result)


def test_foreign_filesystem_on_target_is_replaced(host_plan):
    mi = BASE + "30 21 0:60 / /srv/merged rw - tmpfs junk rw\n" + BIND
    result = run(host_plan, mi)
    assert reasons(result)["overlay /srv/merged"] == ["tmpfs (junk) is mounted there instead of overlay"]
    assert "umount -- /srv/merged" in diff.script(result)


def test_bind_with_wrong_source_or_mode(host_plan):
    wrong_src = CONVERGED.replace(BIND, "34 23 0:40 /other /mnt/share ro - tmpfs srv rw\n")
    assert reasons(run(host_plan, wrong_src))["bind /mnt/share"][0].startswith(
        "bind source differs: want /srv/share")
    rw = CONVERGED.replace(BIND, BIND.replace(" ro,", " rw,"))
    assert reasons(run(host_plan, rw)) == {"bind /mnt/share": ["want read-only, found read-write"]}


def test_missing_bind_source_is_an_error_not_a_change(host_plan, tmp_path):
    p = tmp_path / "s.yml"
    p.write_text("binds: {b1: {source: /srv/nothere, target: /mnt/x}}")
    hp = plan(loader.load([p]).spec)
    result = diff.diff(hp, facts.parse(fact_output(hp, BASE, missing={"/srv/nothere"})))
    assert result.errors == ["bind /mnt/x: /srv/nothere does not exist (create it, or set create_source: true)"]


def test_state_dir_mode_drift_is_chmod(host_plan):
    result = run(host_plan, modes={"/var/lib/lamina": "755"})
    assert reasons(result) == {"volume data": ["/var/lib/lamina has mode 755 and owner 0:0, want 700 0:0"]}
    assert "chmod 700 -- /var/lib/lamina" in diff.script(result)


def test_labels_drift_rewrites_the_file(host_plan):
    r = reasons(run(host_plan, files={"/var/lib/lamina/volumes/data/labels.json": "{}"}))
    assert r == {"volume data": ["/var/lib/lamina/volumes/data/labels.json differs"]}


def test_absent_unmounts_inner_first_and_keeps_data_unless_purge(tmp_path):
    p = tmp_path / "s.yml"
    body = textwrap.dedent("""\
        overlays:
          web: {lower: [/srv/l3, /srv/l2, /srv/l1], upper: /srv/up, work: /srv/work,
                target: /srv/merged, state: absent, mounts: ['data:/data'] PURGE}
        """)
    for purge in (False, True):
        p.write_text(body.replace("PURGE", ", purge: true" if purge else ""))
        hp = plan(loader.load([p]).spec)
        mi = BASE + OVERLAY.format(lower="/srv/l3:/srv/l2:/srv/l1") + INNER.splitlines(True)[0]
        result = diff.diff(hp, facts.parse(fact_output(hp, mi)))
        lines = diff.script(result).splitlines()
        assert lines.index("umount -- /srv/merged/data || fail 'cannot unmount /srv/merged/data; if it is busy,'' stop what uses it or set force: true'") < \
            next(i for i, line in enumerate(lines) if line.startswith("umount -- /srv/merged "))
        assert any(line.startswith("rm -rf") for line in lines) == purge
        if purge:
            assert "rm -rf --one-file-system -- /srv/up" in lines and "rm -rf --one-file-system -- /srv/work" in lines
        assert not any("/srv/l" in line and line.startswith("rm") for line in lines)  # lowers are never purged
        # converged absent state: nothing to do
        result = diff.diff(hp, facts.parse(fact_output(hp, BASE, missing={"/srv/up", "/srv/work"})))
        assert result.changes == []


def test_absent_leaves_a_foreign_mount_alone(tmp_path):
    p = tmp_path / "s.yml"
    p.write_text("binds: {b1: {source: /srv/share, target: /mnt/share, state: absent}}")
    hp = plan(loader.load([p]).spec)
    foreign = BASE + "34 23 0:40 /elsewhere /mnt/share rw - tmpfs srv rw\n"
    assert diff.diff(hp, facts.parse(fact_output(hp, foreign))).changes == []
    ours = BASE + BIND
    assert [c.key for c in diff.diff(hp, facts.parse(fact_output(hp, ours))).changes] == ["bind /mnt/share"]


def test_symlinked_target_compares_resolved_paths(host_plan):
    mi = CONVERGED.replace(" /mnt/share ", " /mnt/real ")  # the host mounted the link's target
    out = fact_output(host_plan, mi, resolved={"/mnt/share": "/mnt/real"})
    assert diff.diff(host_plan, facts.parse(out)).changes == []


def test_long_lower_stack_on_new_util_linux_uses_the_legacy_mount_path():
    want = MountWant("overlay", "/m", "overlay", tuple(f"/layers/{i:040d}" for i in range(8)), "/u", "/w")
    assert diff.mount_command(want, facts.HostState(util_linux=(2, 41))).startswith("LIBMOUNT_FORCE_MOUNT2=always mount -t overlay")
    assert diff.mount_command(want, facts.HostState(util_linux=(2, 38, 1))).startswith("mount -t overlay")


def test_mountinfo_escapes_and_lowerdir_plus():
    line = ("40 21 0:70 / /srv/with\\040space rw - overlay my\\134label "
            "rw,lowerdir+=/a,lowerdir+=/b\\054c,upperdir=/u,workdir=/w")
    (m,) = facts.parse_mountinfo([line])
    assert m.target == "/srv/with space" and m.source == "my\\label"
    assert m.lower == ("/a", "/b,c") and m.super_option("upperdir") == "/u"
    assert not m.read_only


def test_purged_volume_is_deleted_once(tmp_path):
    p = tmp_path / "s.yml"
    p.write_text("volumes: {old: {state: absent, purge: true}}")
    hp = plan(loader.load([p]).spec)
    assert hp.paths() == ["/var/lib/lamina/volumes/old"]
    there = diff.diff(hp, facts.parse(fact_output(hp, BASE)))
    assert "rm -rf --one-file-system -- /var/lib/lamina/volumes/old" in diff.script(there)
    gone = diff.diff(hp, facts.parse(fact_output(hp, BASE, missing={"/var/lib/lamina/volumes/old"})))
    assert gone.changes == []


def test_boot_files_hold_the_mounts_and_are_kept_in_sync(host_plan):
    from lamina import boot

    hp = dataclasses.replace(host_plan, boot=True)
    out = fact_output(hp, CONVERGED)
    systemd = facts.parse(out[:-1] + ["@@lamina-init", "systemd", "@@lamina-end"])
    wanted = boot.files(hp, systemd)
    script = wanted["/var/lib/lamina/boot.sh"]
    order = [line.split(" -- ")[-1] for line in script.splitlines() if "mount " in line and "-- " in line]
    assert order == ["overlay /srv/merged", "/srv/share /mnt/share", "/var/lib/lamina/volumes/data/_data /srv/merged/data",
                     "/srv/share /srv/merged/share", "tmpfs /srv/merged/scratch"]
    assert "WantedBy=multi-user.target" in wanted[boot.UNIT] and "ExecStart=/bin/sh /var/lib/lamina/boot.sh" in wanted[boot.UNIT]
    change = [c for c in diff.diff(hp, systemd).changes if c.key == "boot mounts"]
    assert change and "systemctl daemon-reload && systemctl enable --quiet lamina-mounts.service" in change[0].purge
    synced = facts.parse(out[:-1] + ["@@lamina-init", "systemd", "@@lamina-blobs",
                                     *(f"{boot.digest(c)}  {p}" for p, c in wanted.items()), "@@lamina-end"])
    assert diff.diff(hp, synced).changes == []
    plain = facts.parse(out)  # no systemd: the script, started from /etc/rc.local
    change = [c for c in diff.diff(hp, plain).changes if c.key == "boot mounts"][0]
    assert boot.UNIT not in " ".join(change.purge) and "/etc/rc.local" in change.purge[-1]


def test_a_target_that_resolves_into_a_protected_path_is_refused(tmp_path):
    p = tmp_path / "s.yml"
    p.write_text("binds: {b1: {source: /srv/share, target: /mnt/link}}")
    hp = plan(loader.load([p]).spec)
    out = fact_output(hp, BASE, resolved={"/mnt/link": "/proc/sys"})
    result = diff.diff(hp, facts.parse(out))
    assert result.errors == ["bind /mnt/link: /mnt/link resolves on this host to /proc/sys, where lamina never mounts"]


def test_many_new_directories_take_few_commands_and_keep_their_modes():
    dirs = [(f"/srv/d{i}", 0o755 if i % 3 else 0o700) for i in range(600)]
    lines = diff.mkdir_commands(dirs)
    assert len(lines) == 6  # 3 parts of at most 256: a mkdir and a chmod each
    made = [p for line in lines if line.startswith("mkdir") for p in line.split(" -- ")[1].split()]
    opened = {p for line in lines if line.startswith("chmod 755") for p in line.split(" -- ")[1].split()}
    assert made == [p for p, _ in dirs] and opened == {p for p, m in dirs if m == 0o755}
    assert diff.mkdir_commands([]) == []


def test_new_directories_get_exactly_their_modes_whatever_the_umask(tmp_path):
    import os
    import subprocess

    t = str(tmp_path)
    dirs = [(f"{t}/state", 0o700), (f"{t}/state/vol", 0o700), (f"{t}/state/vol/_data", 0o755),
            (f"{t}/srv/upper", 0o755), (f"{t}/srv/work", 0o700), (f"{t}/srv/tmp", 0o1777)]
    subprocess.run(["sh", "-ec", "umask 077\n" + "\n".join(diff.mkdir_commands(dirs))], check=True)
    assert {p: os.stat(p).st_mode & 0o7777 for p, _ in dirs} == dict(dirs)


def _mounting(target: str, *inner: str, resolved: str | None = None) -> diff.Change:
    return diff.Change(f"mount {target}", [], inner=[(p, p) for p in inner],
                       apply=[f"mount {target}"], targets=(target, resolved or target))


def test_mount_points_join_one_mkdir_unless_a_mount_made_since_covers_them():
    lines = diff.apply_lines([
        _mounting("/c/a/merged"), _mounting("/c/b/merged"),
        _mounting("/c/a/merged/data", "/c/a/merged/data"),
        _mounting("/c/a/merged/data/sub", "/c/a/merged/data/sub"),  # inside a mount made since: after it
        _mounting("/c/b/merged/data", "/c/b/merged/data"),  # joins the mkdir just before
    ])
    assert lines == ["mount /c/a/merged", "mount /c/b/merged", "mkdir -p -- /c/a/merged/data", "mount /c/a/merged/data",
                     "mkdir -p -- /c/a/merged/data/sub /c/b/merged/data", "mount /c/a/merged/data/sub",
                     "mount /c/b/merged/data"]


def test_a_mount_point_under_a_mount_made_since_through_a_symlink_waits_for_it():
    # /link/merged resolves to /real/merged: the mount point inside it may not be made before
    lines = diff.apply_lines([_mounting("/x", "/x"), _mounting("/link/merged", resolved="/real/merged"),
                              diff.Change("m", [], inner=[("/link/merged/data", "/real/merged/data")],
                                          apply=["mount data"], targets=("/link/merged/data",) * 2)])
    assert lines == ["mkdir -p -- /x", "mount /x", "mount /link/merged", "mkdir -p -- /link/merged/data", "mount data"]
    # ...nor one that is written through the symlink's target
    lines = diff.apply_lines([_mounting("/x", "/x"), _mounting("/link/merged", resolved="/real/merged"),
                              _mounting("/real/merged/data", "/real/merged/data")])
    assert lines[-2:] == ["mkdir -p -- /real/merged/data", "mount /real/merged/data"]


def test_one_mkdir_takes_a_bounded_number_of_mount_points():
    changes = [_mounting("/m")] + [_mounting(f"/m/{i}", f"/m/{i}") for i in range(diff.ARGS_PER_COMMAND + 1)]
    mkdirs = [line for line in diff.apply_lines(changes) if line.startswith("mkdir")]
    assert [len(line.split()) - 3 for line in mkdirs] == [diff.ARGS_PER_COMMAND, 1]


DEBIAN_RC_LOCAL = "#!/bin/sh -e\n#\n# rc.local\n#\n# By default this script does nothing.\n\nexit 0\n"


@pytest.mark.parametrize("before, after", [
    (None, "#!/bin/sh\n{hook}\n"),  # no rc.local: made, with the hook
    ("#!/bin/sh\necho hi", "#!/bin/sh\necho hi\n{hook}\n"),  # a last line without a newline is still read
    # Debian's: the hook goes before its final exit, where it runs
    (DEBIAN_RC_LOCAL, DEBIAN_RC_LOCAL.replace("exit 0", "{hook}\nexit 0")),
    # after the exit (where lamina used to append it): moved before it
    ("#!/bin/sh\nexit 0  # done\n{hook}\n\n", "#!/bin/sh\n{hook}\nexit 0  # done\n\n"),
    ("#!/bin/sh\n  {hook}\nexit 0\n", None),  # there already, where it runs: only made executable
    ("#!/bin/sh\nif [ -e /x ]; then\n  exit 1\nfi\n", "#!/bin/sh\nif [ -e /x ]; then\n  exit 1\nfi\n{hook}\n"),
    ("", "#!/bin/sh\n{hook}\n"),  # empty: a shebang too
    ("# {hook}\nexit 0\n", "# {hook}\n{hook}\nexit 0\n"),  # commented out: not the hook
])
def test_rc_local_starts_the_boot_script_where_it_runs(host_plan, tmp_path, monkeypatch, before, after):
    """The fact command reads rc.local, the diff places the hook, its line writes the file;
    read again, the file needs nothing more."""
    import subprocess

    from lamina import boot

    rc = tmp_path / "rc.local"
    monkeypatch.setattr(boot, "RC_LOCAL", str(rc))
    monkeypatch.setattr(facts, "RC_LOCAL", str(rc))
    hp = dataclasses.replace(host_plan, boot=True)
    hook = boot.hook(hp)
    if before is not None:
        rc.write_text(before.format(hook=hook))
        rc.chmod(0o644)
    (read,) = [line for line in facts.command(hp).splitlines() if str(rc) in line]

    def boot_change():
        got = subprocess.run(["/bin/sh", "-c", f"echo @@lamina-x\n{read}\necho @@lamina-end"],
                             capture_output=True, text=True, check=True).stdout.splitlines()
        seen = facts.parse(got)
        state = dataclasses.replace(facts.parse(fact_output(hp, CONVERGED)),
                                    rc_local=seen.rc_local, rc_local_mode=seen.rc_local_mode)
        return [c for c in diff.diff(hp, state).changes if c.key == "boot mounts"][0]

    change = boot_change()
    lines = [line for line in change.purge if str(rc) in line]
    if after is None:
        assert lines == [f"chmod 755 -- {rc}"] and change.reasons[-1] == f"{rc} is not executable"
        after = before
    for line in lines:
        subprocess.run(["/bin/sh", "-ec", line], check=True)
    assert rc.read_text() == after.format(hook=hook) and rc.stat().st_mode & 0o777 == 0o755
    assert not [line for line in boot_change().purge if str(rc) in line]  # a second run: nothing to do


def test_rc_local_placing():
    from lamina import boot

    hook = "[ -x /s/boot.sh ] && /s/boot.sh  # lamina"
    assert boot.rc_local(None, hook) == ["#!/bin/sh", hook]
    assert boot.rc_local(["exit 0", hook], hook) == [hook, "exit 0"]
    assert boot.rc_local(["exit", "", "# end"], hook) == [hook, "exit", "", "# end"]
    assert boot.rc_local(["echo exit 0"], hook) == ["echo exit 0", hook]  # not an exit command
    assert boot.rc_local([hook, "exit 0"], hook) is None
    assert boot.rc_local(["exit 3;", "x", hook], hook) is None  # not a final exit: it runs if x does
    assert boot.rc_local([], hook) == ["#!/bin/sh", hook]


@pytest.mark.parametrize("content", ["#!/bin/sh\nexit 0\fx\n", "directory"])
def test_an_rc_local_not_read_line_by_line_is_left_alone_with_a_warning(host_plan, tmp_path, monkeypatch, content):
    """A line break other than \\n (or a file that is not one) would not survive a rewrite."""
    import subprocess

    from lamina import boot

    rc = tmp_path / "rc.local"
    rc.mkdir() if content == "directory" else rc.write_text(content)
    monkeypatch.setattr(boot, "RC_LOCAL", str(rc))
    monkeypatch.setattr(facts, "RC_LOCAL", str(rc))
    hp = dataclasses.replace(host_plan, boot=True)
    (read,) = [line for line in facts.command(hp).splitlines() if str(rc) in line]
    got = subprocess.run(["/bin/sh", "-c", f"echo @@lamina-x\n{read}\necho @@lamina-end"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    seen = facts.parse(got)
    assert seen.rc_local_mode == "?"
    state = dataclasses.replace(facts.parse(fact_output(hp, CONVERGED)), rc_local=seen.rc_local, rc_local_mode="?")
    result = diff.diff(hp, state)
    assert not [x for c in result.changes for x in c.purge if str(rc) in x]
    assert [w for w in result.warnings if "cannot be read line by line" in w]
