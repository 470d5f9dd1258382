"""The pieces of the fast read that need no host: the light inventory reader (it must give
pyinfra's hosts and data, or step aside), the OpenSSH command line, and the fact command
itself, run by this machine's sh against a scratch tree."""

from __future__ import annotations

import hashlib
import os
import pwd
import subprocess
import textwrap
import time
from dataclasses import replace

import pytest

from lamina import facts, inventory, sshrun
from lamina.errors import LaminaError
from lamina.images import LayerRef
from lamina.plan import Dir, HostPlan, Item, MountWant


def _inv(tmp_path, text: str) -> str:
    path = tmp_path / "inv.py"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_reader_matches_pyinfra_on_the_common_shapes(tmp_path):
    path = _inv(tmp_path, """
        import os as _os
        web = ["w1", ("w2", {"ssh_port": 2222, "lamina_roles": ["demo"]})]
        db = [("d1", {"ssh_hostname": "10.0.0.9", "ssh_user": "ops"}), "w1"]
        notes = "not a group"
        _private = ["ignored"]
        """)
    found = inventory.read(path)
    assert [h.name for h in found] == ["w1", "w2", "d1"]
    data = {h.name: h.data for h in found}
    assert data == {"w1": {}, "w2": {"ssh_port": 2222, "lamina_roles": ["demo"]},
                    "d1": {"ssh_hostname": "10.0.0.9", "ssh_user": "ops"}}
    from lamina.runner import load_inventory

    theirs = load_inventory(path)
    assert [h.name for h in theirs] == [h.name for h in found]
    for h in theirs:
        for key, value in data[h.name].items():
            assert h.data.get(key) == value


@pytest.mark.parametrize("text", [
    'lab = (["a", "b"], {"ssh_user": "x"})',  # a group with group data
    'lab = [("a", {"ssh_password": "p"})]',  # a password: paramiko only
    'lab = [("a", {"_sudo": True})]',  # global arguments in data
    'lab = ["@local"]',  # a connector
    'lab = [("a", {"ssh_port": 1})]\nother = [("a", {"ssh_port": 2})]',  # two data for one host
    'raise ValueError("boom")',  # pyinfra reports errors its own way
    'lab = [("a", {"ssh_strict_host_key_checking": False})]',  # OpenSSH would read False as "off"
])
def test_reader_steps_aside_for_what_only_pyinfra_handles(tmp_path, text):
    assert inventory.read(_inv(tmp_path, text)) is None


def test_a_group_all_lists_exactly_the_hosts(tmp_path):
    path = _inv(tmp_path, """
        all = ["b", "a"]
        web = [("a", {"ssh_port": 2}), "c"]
        """)
    found = inventory.read(path)
    from lamina.runner import load_inventory

    assert [h.name for h in found] == [h.name for h in load_inventory(path)] == ["b", "a"]
    assert found[1].data == {"ssh_port": 2}


def test_reader_steps_aside_for_group_data_and_reads_host_lists(tmp_path):
    path = _inv(tmp_path, 'lab = ["a"]')
    (tmp_path / "group_data").mkdir()
    assert inventory.read(path) is None
    assert [h.name for h in inventory.read("h1,h2")] == ["h1", "h2"]
    assert inventory.read("single-host-or-module.name") is None


def test_reader_passes_an_inventory_exit_message_on(tmp_path):
    with pytest.raises(LaminaError, match="the lab is down"):
        inventory.read(_inv(tmp_path, 'raise SystemExit("the lab is down")'))


def test_ssh_argv_keeps_host_key_checking_and_maps_pyinfra_data():
    argv = sshrun.argv("web", {"ssh_hostname": "10.1.1.1", "ssh_port": 2222, "ssh_user": "ops",
                               "ssh_key": "/k", "ssh_known_hosts_file": "/kh"}, sudo=True)
    assert argv[-3:] == ["--", "10.1.1.1", "sudo -H -n sh -s"]
    assert "StrictHostKeyChecking=accept-new" in argv and "UserKnownHostsFile=/kh" in argv
    assert ["-p", "2222"] == argv[argv.index("-p"):argv.index("-p") + 2]
    assert "BatchMode=yes" in argv
    assert sshrun.argv("web", {"ssh_password": "x"}, sudo=False) is None


@pytest.mark.parametrize("reader", ["shell", "head"])
def test_fact_command_reads_a_real_tree(tmp_path, monkeypatch, reader):
    """The fact command as this machine's sh runs it: shared-prefix variables, odd names,
    missing paths and the one-line managed files all come back right, whether the shell
    reads the files (a few) or `head` does (many)."""
    if reader == "head":
        monkeypatch.setattr(facts, "FEW_FILES", 1)
    base = tmp_path / "it's a dir"
    (base / "sub dir").mkdir(parents=True)
    (base / "link").symlink_to(base / "sub dir")
    (base / "labels.json").write_text('{"a": "b"}\n')
    (base / "empty").write_text("")
    (base / "tricky").write_text("==> not a header <==\nsecond line\n")
    (base / "last").write_text("no newline at the end")
    names = ["sub dir", "link", "missing", "$(touch pwned)", "x\\y"]
    paths = [str(base / n) for n in names]
    item = Item("volume", "v", dirs=tuple(Dir(p) for p in paths),
                files=((str(base / "labels.json"), "x"), (str(base / "empty"), ""), (str(base / "nope"), ""),
                       (str(base / "tricky"), ""), (str(base / "last"), "")))
    plan = HostPlan(str(tmp_path / "state"), (item,), boot=False)
    out = subprocess.run(["sh", "-c", facts.command(plan)], capture_output=True, text=True, check=True)
    state = facts.parse(out.stdout.splitlines())
    assert not (tmp_path / "pwned").exists() and not (base / "pwned").exists()
    assert state.paths[str(base / "link")].resolved == str(base / "sub dir")
    assert state.paths[str(base / "sub dir")].exists and not state.paths[str(base / "missing")].exists
    assert set(state.paths) >= set(paths)
    assert state.files == {str(base / "labels.json"): '{"a": "b"}', str(base / "empty"): "",
                           str(base / "tricky"): "==> not a header <==", str(base / "last"): "no newline at the end"}
    assert state.init in ("systemd", "none")
    assert state.mounts and state.user == (os.geteuid(), pwd.getpwuid(os.geteuid()).pw_name)
    assert "head -n 1" in facts.command(plan) if reader == "head" else "head" not in facts.command(plan)
    assert not state.util_linux  # no lower stack here that could need it


def test_util_linux_is_read_only_for_lower_stacks_that_may_pass_the_new_mount_apis_limit():
    def plan(lower=(), layers=()):
        want = MountWant("overlay", "/m", "o", lower=lower, upper="/u", work="/w", layers=layers)
        return HostPlan("/var/lib/lamina", (Item("overlay", "o", mount=want),), boot=False)

    assert not facts.long_lowers(plan(lower=("/a", "/b")))
    assert facts.long_lowers(plan(lower=tuple(f"/srv/{'x' * 60}{i}" for i in range(4))))
    ref = LayerRef("k", "images.i.steps[0]", digest="0" * 64)
    assert not facts.long_lowers(plan(layers=(ref,) * 36)) and facts.long_lowers(plan(layers=(ref,) * 37))
    out = subprocess.run(["sh", "-c", facts.command(plan(lower=tuple(f"/srv/{'x' * 60}{i}" for i in range(4))))],
                         capture_output=True, text=True, check=True)
    assert facts.parse(out.stdout.splitlines()).util_linux >= (2,)


@pytest.mark.parametrize("linked", [False, True])
def test_paths_resolve_as_readlink_does_with_or_without_a_symlink_above_them(tmp_path, linked):
    """Without a symlink on the way to any path, the fact skips readlink and each path is its
    own resolved form; a symlink anywhere above a path (here a dir the plan never names)
    sends it through readlink -m. Both give what readlink -m gives."""
    real = tmp_path / "real"
    (real / "a" / "b").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(real)
    top = tmp_path / ("alias" if linked else "real")
    paths = [str(top / "a"), str(top / "a" / "b"), str(top / "a" / "b" / "missing" / "deeper"), str(top / "new")]
    plan = HostPlan(str(tmp_path / "state"), (Item("volume", "v", dirs=tuple(Dir(p) for p in paths)),), boot=False)
    out = subprocess.run(["sh", "-c", facts.command(plan)], capture_output=True, text=True, check=True).stdout
    assert ("@@lamina-resolved" in out.splitlines()) == linked
    state = facts.parse(out.splitlines())
    want = subprocess.run(["readlink", "-m", "--", *paths], capture_output=True, text=True).stdout.splitlines()
    assert [state.paths[p].resolved for p in paths] == want
    assert state.paths[str(top / "a" / "b")].is_dir and not state.paths[str(top / "new")].exists
    assert str(tmp_path) in facts.above(paths) and "/" not in facts.above(paths)


def test_fact_command_lists_the_layer_store_and_the_user_with_builtins(tmp_path):
    """The store's names come from shell globs (no process), link targets from one `ls -l`;
    `id` gives the user; an empty or missing dir lists nothing."""
    state_dir = tmp_path / "state"
    for d in ("layers/" + "a" * 64, "layers/" + "b" * 64, "staging/tmp.1", "l"):
        (state_dir / d).mkdir(parents=True)
    (state_dir / "l" / "L1").symlink_to("../layers/" + "a" * 64 + "/diff")
    (state_dir / "staging" / "dangling").symlink_to("nowhere")
    plan = replace(HostPlan(str(state_dir), (), boot=False), gc=True)
    state = facts.parse(subprocess.run(["sh", "-c", facts.command(plan)], capture_output=True, text=True,
                                       check=True).stdout.splitlines())
    assert state.layers == {"a" * 64, "b" * 64}
    assert set(state.staging) == {"tmp.1", "dangling"}
    assert state.links == {"L1": "../layers/" + "a" * 64 + "/diff"}
    assert state.user == (os.geteuid(), pwd.getpwuid(os.geteuid()).pw_name)
    empty = facts.parse(subprocess.run(["sh", "-c", facts.command(replace(HostPlan(str(tmp_path / "none"), ()), gc=True))],
                                       capture_output=True, text=True, check=True).stdout.splitlines())
    assert empty.layers == frozenset() and empty.staging == () and empty.links == {}


def test_blob_digests_are_read_from_sha256sum_even_for_odd_names(tmp_path):
    names = [tmp_path / "boot.sh", tmp_path / "back\\slash", tmp_path / "new\nline", tmp_path / "missing"]
    for n in names[:3]:
        n.write_text(f"content of {n.name}")
    out = subprocess.run(["sh", "-c", "sha256sum -- \"$@\" 2>/dev/null || :", "sh", *map(str, names)],
                         capture_output=True, text=True).stdout
    want = {str(n): hashlib.sha256(n.read_bytes()).hexdigest() for n in names[:3]}
    assert facts._blobs(out.splitlines()) == want


def test_one_shell_runs_many_scripts_each_apart_with_its_own_output_and_status():
    """sshrun._Shell as the hosts run it, here on a local `sh -s`: each script in a subshell
    (variables, directory and `exit` stay there; stdin is not the next script), its stdout,
    stderr and exit status told apart by markers; output left after a marker ends its use."""
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    shell = sshrun._Shell(subprocess.Popen(["sh", "-s"], **pipes))
    try:
        out = shell.run("x=1; cd /tmp; printf 'a\\nb'; echo oops >&2; cat; exit 3", 10)
        assert (out.ok, out.stdout, out.stderr) == (False, "a\nb", "oops\n")
        out = shell.run('echo "x=${x:-unset} $(pwd)"', 10)
        assert (out.ok, out.stdout, out.stderr) == (True, f"x=unset {os.getcwd()}\n", "")
        big = shell.run("i=0; while [ $i -lt 20000 ]; do echo line $i; i=$((i+1)); done", 10)
        assert big.ok and big.stdout.splitlines()[-1] == "line 19999" and len(big.stdout.splitlines()) == 20000
        assert shell.alive
        assert shell.quiet()
        late = shell.run("(sleep 0.2; echo late) & echo now", 10)
        assert late.ok and late.stdout == "now\n"
        time.sleep(0.5)
        assert not shell.quiet() and not shell.alive  # "late" would land in the next script's output
    finally:
        shell.end()
        shell.proc.wait(timeout=10)
    dead = sshrun._Shell(subprocess.Popen(["sh", "-c", "echo 'sudo: a password is required' >&2; exit 1"], **pipes))
    out = dead.run("echo hi", 10)
    assert not out.ok and "password is required" in out.stderr and not dead.alive


def test_shared_words_keep_commands_small():
    paths = [f"/var/lib/lamina/containers/c{i}/{leaf}" for i in range(200) for leaf in ("upper", "work", "merged")]
    assignments, words = facts.shared_words(paths)
    spelled = sum(len(p) + 1 for p in paths)
    assert sum(len(w) + 1 for w in assignments + words) < spelled * 0.75
    script = "\n".join([*assignments, "printf '%s\\n' " + " ".join(words)])
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == paths


def test_a_corrupt_layer_never_reaches_the_host_in_full(tmp_path):
    """The controller hashes a layer as it streams it and holds back the last chunk unless the
    digest matches: the host then sees a short stream and stores nothing (ship.sh)."""
    import hashlib

    from lamina import channel

    path = tmp_path / "layer.tar"
    data = bytes(range(256)) * (3 * channel.CHUNK // 256 + 7)
    path.write_bytes(data)
    good = hashlib.sha256(data).hexdigest()
    assert b"".join(map(channel.as_bytes, channel.verified_chunks(str(path), good))) == data
    sent = []
    with pytest.raises(channel.Corrupt):
        for chunk in channel.verified_chunks(str(path), "0" * 64):
            sent.append(channel.as_bytes(chunk))
    assert 0 < len(b"".join(sent)) < len(data)
    *bulk, last = channel.verified_chunks(str(path), good)
    assert bulk and all(isinstance(c, channel.FilePart) for c in bulk) and isinstance(last, bytes)  # bulk: sendfile


def test_streams_of_one_layer_to_several_hosts_share_one_digest(tmp_path, monkeypatch):
    """Streams to several hosts at once, at different speeds, each get every byte and each
    check the whole digest, though every chunk is hashed once; a rewritten file is hashed afresh."""
    import hashlib
    import os

    from lamina import channel

    path = tmp_path / "layer.tar"
    data = os.urandom(5 * channel.CHUNK + 99)
    path.write_bytes(data)
    good = hashlib.sha256(data).hexdigest()
    hashed = []
    real = hashlib.sha256
    monkeypatch.setattr(channel.hashlib, "sha256", lambda: _Counting(real(), hashed))
    fast, slow = channel.verified_chunks(str(path), good), channel.verified_chunks(str(path), good)
    got_fast, got_slow = [], [channel.as_bytes(next(slow))]
    got_fast += map(channel.as_bytes, fast)  # one stream runs ahead to the end
    got_slow += map(channel.as_bytes, slow)  # the other follows, the digest done already
    assert b"".join(got_fast) == b"".join(got_slow) == data
    assert sum(hashed) == len(data)  # once, not twice
    path.write_bytes(data[::-1])  # rewritten: a new mtime, a new digest to compute
    with pytest.raises(channel.Corrupt):
        list(channel.verified_chunks(str(path), good))


def test_streams_share_a_digest_in_greenlets_after_gevent_patches_threading(tmp_path):
    """pyinfra_cli patches threading with gevent when the slow path imports it, after channel
    was imported: streams of one layer to several hosts, as greenlets, must not deadlock."""
    import sys

    path = tmp_path / "layer.tar"
    data = os.urandom(3 * 1024 * 1024 + 5)
    path.write_bytes(data)
    script = textwrap.dedent("""\
        import sys
        from lamina import channel  # first, as in a run: its lock predates the patching
        from gevent import monkey
        monkey.patch_all()
        import gevent
        path, want = sys.argv[1:]
        jobs = [gevent.spawn(lambda: b"".join(map(channel.as_bytes, channel.verified_chunks(path, want))))
                for _ in range(3)]
        gevent.joinall(jobs, timeout=30)
        print([len(j.value) if j.successful() else None for j in jobs])
        """)
    out = subprocess.run([sys.executable, "-c", script, str(path), hashlib.sha256(data).hexdigest()],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str([len(data)] * 3)


class _Counting:
    def __init__(self, sha, counts):
        self.sha, self.counts = sha, counts

    def update(self, b):
        self.counts.append(len(b))
        self.sha.update(b)

    def hexdigest(self):
        return self.sha.hexdigest()


@pytest.mark.parametrize("with_openssl", [True, False])
def test_host_sha256_is_the_same_with_or_without_openssl(tmp_path, with_openssl):
    """common.sh hashes with OpenSSL when the host has it (much faster) and with coreutils
    otherwise (running the command again): seals must not depend on which one a host has."""
    import hashlib
    import os
    import shutil
    from pathlib import Path

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "sha256sum", "cat", *(["openssl"] if with_openssl else [])):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    assert (shutil.which("openssl", path=str(bin_dir)) is not None) == with_openssl  # bootstrap installs it
    common = Path(__file__).resolve().parents[2] / "lamina" / "sh" / "common.sh"
    data = os.urandom(3 << 20)
    (tmp_path / "data").write_bytes(data)
    out = subprocess.run([str(bin_dir / "sh"), "-c", f". {common}; digest cat {tmp_path / 'data'}; echo \"$_h\"; sha cat {tmp_path / 'data'}; echo \"$_h\""],
                         capture_output=True, env={"PATH": str(bin_dir)}, check=True)
    assert out.stdout.decode().split() == [hashlib.sha256(data).hexdigest()] * 2


def test_boot_templates_render_as_jinja2_renders_them():
    """boot.render fills plain `{{ name }}` templates without importing Jinja2: same bytes."""
    import jinja2

    from lamina import boot

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(boot.TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    values = {"commands": "mount -t overlay 'a b' \\\\ {{ x }}\nmkdir -p /x", "state_dir": "/var/lib/lamina",
              "script": "/var/lib/lamina/boot.sh", "wanted_by": "multi-user.target"}
    for name in ("boot.sh.j2", "lamina-mounts.service.j2"):
        assert boot.render(name, **values) == env.get_template(name).render(**values)


def test_the_lock_taken_by_a_shell_lasts_until_its_input_ends_and_the_runs_scripts_are_done(tmp_path):
    """lock.in_shell, run at the top level of a `sh -s` (as sshrun's shell runs it): the lock
    is held while the shell lives, a second taker is told who holds it, and once the shell's
    input ends the lock waits for scripts still holding apply.busy shared (layer streams)."""
    from lamina import lock

    d = str(tmp_path / "run")
    held = lambda: subprocess.run(["flock", "-n", f"{d}/apply.lock", "true"]).returncode != 0  # noqa: E731
    shell = subprocess.Popen(["sh", "-s"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    shell.stdin.write(lock.in_shell(5, d) + "\n")
    shell.stdin.flush()
    assert shell.stdout.readline() == "locked\n" and held()
    other = subprocess.run(["sh", "-c", lock.in_shell(1, d)], capture_output=True, text=True)
    assert other.stdout == f"busy {open(f'{d}/apply.holder').read()}"
    stream = subprocess.Popen(["flock", "-s", f"{d}/apply.busy", "sleep", "1"])  # a layer stream of this run
    time.sleep(0.2)
    shell.stdin.close()
    time.sleep(0.4)
    assert shell.poll() is None and held()  # input ended; the stream still runs
    stream.wait()
    shell.wait(timeout=5)
    assert not held()
