"""Hostile input: every spec of tests/corpus/bad ends in located one-line errors and exit 2,
with no traceback and no remote command; awkward but legal paths work or are refused.

Each corpus file starts with `# expect: <part of an error message>` and `# line: N` (the
line that error points at). Companion files (archives, a directory to copy) are in
tests/corpus/bad/files, the files/ dir of those specs.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import textwrap
from pathlib import Path

import pytest
from pyinfra.api.host import Host

from lamina import images, loader
from lamina.cli import main
from lamina.diff import Lower, diff, mount_command
from lamina.errors import SpecInvalid
from lamina.facts import HostState, parse_mountinfo
from lamina.plan import plan

CORPUS = Path(__file__).parents[1] / "corpus" / "bad"
CASES = sorted(CORPUS.glob("*.yml"))
SLOW = {"084-name-10mb.yml", "018-yaml-deep-nesting.yml"}  # seconds each: validated, not planned too
INVENTORY = "ghosts = ['ghost-host.invalid']\n"  # a host that does not exist


def header(path: Path) -> tuple[str, int | None]:
    lines = path.read_bytes().split(b"\n", 2)
    expect = lines[0].decode().removeprefix("# expect: ")
    m = re.fullmatch(rb"# line: (\d+)", lines[1])
    return expect, int(m.group(1)) if m else None


@pytest.fixture(autouse=True)
def _private_stores(tmp_path_factory, monkeypatch):
    """Layers built while validating go to a private cache; no committed images exist."""
    monkeypatch.setenv("LAMINA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "layer-cache"))
    monkeypatch.setenv("LAMINA_IMAGES", str(tmp_path_factory.getbasetemp() / "no-images"))


@pytest.fixture
def no_remote(monkeypatch):
    """Any attempt to reach a host fails the test."""
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"lamina tried to reach {self.name}")

    monkeypatch.setattr(Host, "connect", refuse)
    monkeypatch.setattr(Host, "run_shell_command", refuse)
    monkeypatch.setattr(Host, "put_file", refuse)


def check_output(path: Path, rc: int, out: str, err: str) -> list[tuple[int, int, str]]:
    """Exit 2, only located one-line errors (and a hint), no traceback; the errors."""
    assert rc == 2, err
    assert "Traceback" not in out + err
    assert out == ""
    located = re.compile(rf"^{re.escape(str(path))}:(\d+):(\d+): (.+)$")
    errors = []
    for line in err.split("\n")[:-1]:
        if line.startswith("lamina: hint: "):
            continue
        m = located.match(line)
        assert m, f"not a located one-line error: {line[:300]!r}"
        errors.append((int(m.group(1)), int(m.group(2)), m.group(3)))
    assert err.endswith("\n") and errors
    return errors


def check_expectation(path: Path, errors: list[tuple[int, int, str]]) -> None:
    expect, line = header(path)
    found = [(n, col) for n, col, msg in errors if expect in msg]
    assert found, f"{path.name}: no error says {expect!r}: {[m[:200] for _, _, m in errors]}"
    if line is not None:
        assert line in [n for n, _ in found], f"{path.name}: want line {line}, got {found}"


def test_corpus_is_big_and_numbered():
    assert len(CASES) >= 110
    assert all(re.fullmatch(r"\d{3}-[a-z0-9-]+\.yml", p.name) for p in CASES)
    assert len({p.name[:3] for p in CASES}) == len(CASES)
    categories = {p.name[4:].split("-")[0] for p in CASES}
    assert {"yaml", "tpl", "type", "unknown", "name", "path", "ovl", "prot", "nest", "mount", "img", "enc"} <= categories


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_validate_refuses_with_located_errors(path, capsys, no_remote):
    rc = main(["validate", str(path)])
    out, err = capsys.readouterr()
    check_expectation(path, check_output(path, rc, out, err))


@pytest.mark.parametrize("path", [p for p in CASES if p.name not in SLOW],
                         ids=[p.stem for p in CASES if p.name not in SLOW])
def test_plan_refuses_before_any_remote_command(path, tmp_path, capsys, no_remote):
    inventory = tmp_path / "ghosts.py"
    inventory.write_text(INVENTORY)
    rc = main(["plan", "-i", str(inventory), str(path)])
    out, err = capsys.readouterr()
    check_expectation(path, check_output(path, rc, out, err))


def test_the_ghost_host_would_be_reached_with_a_good_spec(tmp_path, capsys, monkeypatch):
    """The control for the test above: with a valid spec, plan does go for the host."""
    tried = []
    monkeypatch.setattr(Host, "connect", lambda self, *a, **k: tried.append(self.name))
    inventory = tmp_path / "ghosts.py"
    inventory.write_text(INVENTORY)
    spec = tmp_path / "good.yml"
    spec.write_text("volumes: {v1: {}}\n")
    rc = main(["plan", "-i", str(inventory), str(spec)])
    assert tried == ["ghost-host.invalid"] and rc == 1, capsys.readouterr()


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_a_bare_unknown_host_name_as_inventory(command, capsys):
    path = CORPUS / "081-name-dash.yml"
    rc = main([command, "-i", "ghost-host.invalid", str(path)])
    assert rc == 2, capsys.readouterr()


@pytest.mark.parametrize(("make", "expect"), [
    (lambda d: d / "missing.yml", "cannot read: No such file or directory"),
    (lambda d: d, "cannot read: Is a directory"),
])
def test_missing_or_unreadable_spec_file(tmp_path, capsys, make, expect):
    path = make(tmp_path)
    rc = main(["validate", str(path)])
    out, err = capsys.readouterr()
    errors = check_output(path, rc, out, err)
    assert errors == [(1, 1, expect)]


def test_errors_across_files(tmp_path, capsys):
    a, b, c = (tmp_path / n for n in ("a.yml", "b.yml", "c.yml"))
    a.write_text("state_dir: /var/lib/one\nvolumes: {v1: {}}\n")
    b.write_text("state_dir: /var/lib/two\nvolumes:\n  v1: {}\n")
    c.write_bytes(b"volumes: {v\xff: {}}\n")
    assert main(["validate", str(a), str(b), str(c)]) == 2
    err = capsys.readouterr().err
    assert err == f"{c}:1:12: not UTF-8 (byte 0xff)\n"  # files that cannot be read stop the merge
    assert main(["validate", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert f"{b}:1:12: state_dir: '/var/lib/two' conflicts with '/var/lib/one' set in {a}" in err
    assert f"{b}:3:3: volumes.v1: already defined in {a}:2" in err


def test_merge_keys_override_as_yaml_says(tmp_path):
    """<<: merged keys give way to explicit ones (not a duplicate); explicit ones stay unique."""
    path = tmp_path / "spec.yml"
    path.write_text(textwrap.dedent("""\
        binds:
          b0: &b {source: /srv/s, target: /mnt/b0, read_only: true}
          b1:
            <<: *b
            target: /mnt/b1
          b2: &b2
            <<: *b
            target: /mnt/b2
          b3:
            <<: [*b2, *b]
            target: /mnt/b3
    """))
    spec = loader.load([path]).spec
    assert {n: (b.source, b.target, b.read_only) for n, b in spec.binds.items()} == {
        "b0": ("/srv/s", "/mnt/b0", True), "b1": ("/srv/s", "/mnt/b1", True),
        "b2": ("/srv/s", "/mnt/b2", True), "b3": ("/srv/s", "/mnt/b3", True)}


def test_templates_cannot_reach_python(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "spec.yml"
    escape = "{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}"
    path.write_text(f'volumes: {{v1: {{labels: {{x: "{escape}"}}}}}}\n')
    with pytest.raises(SpecInvalid, match="is unsafe"):
        loader.load([path])
    assert not marker.exists()


def test_copy_source_symlink_escaping_the_spec_dir_is_refused(tmp_path):
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "escape").symlink_to("/etc/hostname")
    path = tmp_path / "spec.yml"
    path.write_text("images: {app: {steps: [{copy: {src: escape, dest: /x}}]}}\n")
    with pytest.raises(SpecInvalid):
        images.resolve(loader.load([path]))


def test_an_overlay_is_mounted_after_the_overlay_it_stacks_on(tmp_path):
    path = tmp_path / "spec.yml"
    path.write_text("overlays:\n  top: {lower: [/srv/x/y/base, /srv/l2], target: /top}\n"
                    "  base: {lower: [/srv/b1, /srv/b2], target: /srv/x/y/base}\n")
    order = [i.mount.target for i in plan(loader.load([path]).spec).items if i.mount]
    assert order.index("/srv/x/y/base") < order.index("/top")


# --- awkward but legal paths ------------------------------------------------------------

AWKWARD = {
    "space": "my dir",
    "comma": "a,b",
    "colon": "a:b",
    "single-quote": "it's",
    "double-quote": 'say "hi"',
    "command-substitution": "$(touch /tmp/lamina-pwned)",
    "backticks": "`id`",
    "semicolon-ampersand": "a;b&c|d",
    "glob": "*?[a]",
    "hash-tilde": "#~x",
    "backslash": "a\\b",
    "dash": "-rf",
    "unicode": "données ☃",
    "percent-equals": "size=1%",
}
UNSAFE_IN_OPTIONS = re.compile(r"[,:\\\s]")  # refused in overlay layer dirs and the state dir (by design)
UNSAFE_IN_SHORT_SYNTAX = ":"


def yaml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sh_argv(command: str) -> list[list[str]]:
    """What a POSIX shell passes to mount(8) for `command` (mount and cd stubbed)."""
    stub = "mount() { printf '%s\\0' mount \"$@\"; printf '\\1'; }\ncd() { :; }\n"
    out = subprocess.run(["sh", "-c", stub + command], capture_output=True, check=True).stdout.decode()
    return [call.split("\0")[:-1] for call in out.split("\1")[:-1]]


def mount_calls(spec_text: str, tmp_path: Path) -> tuple[list[str], list[list[str]]]:
    path = tmp_path / "spec.yml"
    path.write_text(spec_text)
    loaded = loader.load([path])
    host_plan = plan(loaded.spec, images.resolve(loaded) if loaded.spec.images else {})
    commands = []
    for item in host_plan.items:
        if item.mount is None:
            continue
        lower = Lower(("/l/a", "/l/b"), "a:b", "/var/lib/lamina/l") if item.mount.layers else None
        commands.append(mount_command(item.mount, HostState(), lower))
    for cmd in commands:
        assert shlex.split(cmd)  # quoted: parses
    # and every command lamina would run for the plan is valid shell
    script = [line for change in diff(host_plan, HostState()).changes
              for line in change.unmount + change.prepare + change.apply + change.purge]
    subprocess.run(["sh", "-n", "-c", "\n".join(script)], check=True)
    return commands, [call for cmd in commands for call in sh_argv(cmd)]


@pytest.mark.parametrize("awk", AWKWARD.values(), ids=AWKWARD.keys())
def test_awkward_bind_and_tmpfs_paths_round_trip(awk, tmp_path):
    source, target = f"/srv/{awk}/src", f"/mnt/{awk}/dst"
    text = (f"binds:\n  b1: {{source: {yaml_str(source)}, target: {yaml_str(target)}}}\n"
            f"overlays:\n  web:\n    lower: [/srv/l2, /srv/l1]\n    target: {yaml_str(f'/srv/m/{awk}')}\n"
            f"    mounts:\n      - {{type: tmpfs, target: {yaml_str('/' + awk)}, tmpfs: {{size: 1m}}}}\n"
            f"      - {{type: bind, source: {yaml_str('/srv/' + awk)}, target: /b}}\n")
    commands, calls = mount_calls(text, tmp_path)
    assert ["mount", "-o", "bind", "--", source, target] in calls
    assert ["mount", "-t", "tmpfs", "-o", "size=1m", "--", "tmpfs", f"/srv/m/{awk}/{awk}"] in calls
    assert ["mount", "-o", "bind", "--", f"/srv/{awk}", f"/srv/m/{awk}/b"] in calls
    overlay = [c for c in calls if "overlay" in c]
    assert overlay == [["mount", "-t", "overlay", "-o", "lowerdir=/srv/l2:/srv/l1", "--", "overlay", f"/srv/m/{awk}"]]
    for cmd in commands:  # what the shell passes is what shlex reads
        assert shlex.split(cmd)[-1] == sh_argv(cmd)[-1][-1]


@pytest.mark.parametrize("awk", AWKWARD.values(), ids=AWKWARD.keys())
def test_awkward_overlay_layer_dirs_work_or_are_refused(awk, tmp_path):
    lower, upper, work = (f"/srv/{awk}/{d}" for d in ("lower", "upper", "work"))
    path = tmp_path / "spec.yml"
    path.write_text(f"overlays:\n  web: {{lower: [{yaml_str(lower)}], upper: {yaml_str(upper)},"
                    f" work: {yaml_str(work)}, target: /srv/merged}}\n")
    if UNSAFE_IN_OPTIONS.search(awk):
        with pytest.raises(SpecInvalid) as e:
            loader.load([path])
        assert all(err.line == 2 and "overlay mount options cannot carry" in err.message for err in e.value.errors)
        assert len(e.value.errors) == 3
        return
    _, calls = mount_calls(path.read_text(), tmp_path)
    assert calls == [["mount", "-t", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}",
                      "--", "overlay", "/srv/merged"]]


@pytest.mark.parametrize("awk", AWKWARD.values(), ids=AWKWARD.keys())
def test_awkward_state_dir_and_container_target(awk, tmp_path):
    state_dir = f"/var/lib/{awk}"
    text = (f"state_dir: {yaml_str(state_dir)}\nimages:\n  base: {{steps: [{{run: 'true'}}]}}\n"
            f"containers:\n  c1: {{image: base, target: {yaml_str(f'/srv/{awk}/c1')}, mounts: ['vol1:/data']}}\n")
    path = tmp_path / "spec.yml"
    path.write_text(text)
    if UNSAFE_IN_OPTIONS.search(awk):  # the containers' upperdir= and workdir= lie in it
        with pytest.raises(SpecInvalid) as e:
            loader.load([path])
        assert [(err.line, err.message.split(":")[0]) for err in e.value.errors] == [(1, "state_dir")]
        return
    _, calls = mount_calls(text, tmp_path)
    c = f"{state_dir}/containers/c1"
    assert ["mount", "-t", "overlay", "-o", f"lowerdir=a:b,upperdir={c}/upper,workdir={c}/work,redirect_dir=off,"
            "metacopy=off", "--", "overlay", f"/srv/{awk}/c1"] in calls
    assert ["mount", "-o", "bind", "--", f"{state_dir}/volumes/vol1/_data", f"/srv/{awk}/c1/data"] in calls


@pytest.mark.parametrize("awk", AWKWARD.values(), ids=AWKWARD.keys())
def test_awkward_short_syntax_mounts(awk, tmp_path):
    path = tmp_path / "spec.yml"
    path.write_text(f"overlays:\n  web:\n    lower: [/srv/l2, /srv/l1]\n    target: /srv/m\n"
                    f"    mounts: [{yaml_str(f'/srv/{awk}:/in/{awk}:ro')}]\n")
    if UNSAFE_IN_SHORT_SYNTAX in awk:  # which colon ends the source is anyone's guess
        with pytest.raises(SpecInvalid, match="expected 'VOLUME:/path"):
            loader.load([path])
        return
    _, calls = mount_calls(path.read_text(), tmp_path)
    assert ["mount", "-o", "bind,ro", "--", f"/srv/{awk}", f"/srv/m/in/{awk}"] in calls


@pytest.mark.parametrize("awk", AWKWARD.values(), ids=AWKWARD.keys())
def test_awkward_targets_read_back_from_mountinfo(awk):
    """The kernel escapes space, tab, newline and backslash in mountinfo; facts undo it."""
    target = f"/mnt/{awk}"
    escaped = "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in target)
    line = f"36 35 98:0 / {escaped} rw,noatime master:1 - tmpfs tmpfs rw,size=1024k"
    (entry,) = parse_mountinfo([line])
    assert entry.target == target


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`lamina schema | head -1`: the pipe closes under lamina's output; it stops quietly with
    128 + SIGPIPE, as a shell reports a command a pipe cut short."""
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "lamina.cli", "schema"], cwd=Path(__file__).parents[2],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before lamina writes a byte
    assert proc.wait(timeout=60) == 141
    assert proc.stderr.read() == b""


def test_output_held_in_a_buffer_meets_the_closed_pipe_at_the_flush(monkeypatch):
    """A short output sits in stdout's buffer until lamina flushes it: the closed pipe is
    met there, inside main, and not at the interpreter's exit (exit 120 and a message)."""
    import io
    import sys

    class Closed(io.StringIO):  # what stdout does when the pipe's reader is gone
        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["schema"]) == 141
