"""Stored plans (lamina/planstore.py): a re-run of unchanged specs reuses them, and any
change to what planning read — spec, inventory data, image sources, cached layers — plans
afresh. Planning is real here (real specs, real layer builds); only "did it plan" is
observed, by counting calls of runner._plan_all."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lamina import planstore, runner

HOSTS = [("h1", {"role": "a"}), ("h2", {"role": "b"})]


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.setenv("LAMINA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LAMINA_IMAGES", str(tmp_path / "images"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "files" / "app").mkdir(parents=True)
    (tmp_path / "files" / "app" / "a.txt").write_text("one\n")
    spec = tmp_path / "spec.yml"
    spec.write_text("images:\n  app: {steps: [{copy: {src: app, dest: /app}}]}\n"
                    "containers:\n  c1: {image: app}\n"
                    "volumes:\n  v-{{ role }}: {}\n")
    calls = []
    real = runner._plan_all
    monkeypatch.setattr(runner, "_plan_all", lambda *a, **k: calls.append(1) or real(*a, **k))
    return tmp_path, spec, calls


def plans(spec, hosts=HOSTS, **flags):
    return runner._plans(hosts, [str(spec)], None, **{"gc": False, "prune": False, "check_layers": False, **flags})


def test_an_unchanged_rerun_reuses_the_plans(work):
    _, spec, calls = work
    first = plans(spec)
    second = plans(spec)
    assert calls == [1]
    assert repr(second) == repr(first)  # the same plans, read back (layer refs compare by identity)


@pytest.mark.parametrize("change", ["spec", "spec-same-size", "host-data", "flags", "source-file", "source-new",
                                    "layer-tar", "cwd"])
def test_any_change_to_what_planning_read_plans_afresh(work, change, monkeypatch):
    root, spec, calls = work
    first = plans(spec)
    hosts, flags = HOSTS, {}
    if change == "spec":
        spec.write_text(spec.read_text() + "binds:\n  b1: {source: /s, target: /t}\n")
    elif change == "spec-same-size":  # rewritten at once, same length: compared by content
        spec.write_text(spec.read_text().replace("c1", "c9"))
    elif change == "host-data":
        hosts = [("h1", {"role": "a"}), ("h2", {"role": "c"})]
    elif change == "flags":
        flags = {"prune": True}
    elif change == "source-file":
        (root / "files" / "app" / "a.txt").write_text("two\n")
    elif change == "source-new":
        (root / "files" / "app" / "b.txt").write_text("new\n")
    elif change == "layer-tar":
        ref = next(r for r in first["h1"].layers.values() if r.layer)
        ref.layer.path.unlink()
    elif change == "cwd":
        other = root / "elsewhere"
        other.mkdir()
        monkeypatch.chdir(other)
    again = plans(spec, hosts, **flags)
    assert calls == [1, 1], change
    assert again is not None


def test_a_bad_spec_is_never_stored(work):
    _, spec, calls = work
    spec.write_text("containers:\n  c1: {image: nope}\n")
    for _ in range(2):
        with pytest.raises(runner.SpecInvalid):
            plans(spec)
    assert calls == [1, 1]


def test_a_damaged_store_entry_plans_afresh(work):
    root, spec, calls = work
    plans(spec)
    for entry in (root / "cache" / "plans").iterdir():
        entry.write_bytes(b"not a pickle")
    plans(spec)
    assert calls == [1, 1]
    assert oct((root / "cache" / "plans").stat().st_mode & 0o777) == "0o700"


def test_a_stored_plan_is_read_without_the_spec_machinery(work):
    """The point of the store: a no-op run imports neither YAML, pydantic nor Jinja2."""
    root, spec, _ = work
    plans(spec)
    code = ("import sys; from lamina import runner\n"
            f"p = runner._plans({HOSTS!r}, [{str(spec)!r}], None, gc=False, prune=False, check_layers=False)\n"
            "assert set(p) == {'h1', 'h2'}\n"
            "print(sorted(m for m in ('yaml', 'pydantic', 'jinja2', 'lamina.loader', 'lamina.spec',"
            " 'lamina.tarball') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         env=os.environ.copy(), check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_stored_plan_marks_its_layer_tars_used_once_a_day(work):
    """What keeps the layer cache from dropping the tars of a spec that is only ever re-run
    from its stored plan (tarball._prune), without touching the tars themselves."""
    root, spec, calls = work
    plans(spec)
    cache = root / "cache"
    (tar,) = (cache / "layers").glob("*.tar")
    stamp = cache / "used" / tar.name
    before = os.stat(tar)
    long_ago = before.st_mtime - 3 * planstore.DAY
    for entry in (cache / "plans").iterdir():
        os.utime(entry, (long_ago, long_ago))
    os.utime(stamp, (long_ago, long_ago))
    plans(spec)
    assert calls == [1] and stamp.stat().st_mtime > long_ago + planstore.DAY  # stamped now
    os.utime(stamp, (long_ago, long_ago))
    plans(spec)  # the stored plan was used less than a day ago: nothing stamped again
    assert calls == [1] and stamp.stat().st_mtime == long_ago
    after = os.stat(tar)
    assert (after.st_mtime_ns, after.st_ctime_ns) == (before.st_mtime_ns, before.st_ctime_ns)


def test_signature_sees_a_change_deep_in_a_tree(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    f = tmp_path / "a" / "b" / "f"
    f.write_text("x")
    before = planstore.signature(str(tmp_path), tree=True)
    os.utime(f, ns=(1, 1))
    assert planstore.signature(str(tmp_path), tree=True) != before
    assert planstore.signature(str(tmp_path / "missing")) is None
