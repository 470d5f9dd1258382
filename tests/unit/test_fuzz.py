"""Property-based fuzzing of the loader (hypothesis): whatever the input, loading either
gives a spec that plans, or raises SpecInvalid whose every error is located (file, line
and column >= 1) and one line. Any other exception is a bug.

Derandomized: the same examples on every run, so a failure reproduces in CI.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lamina import images, loader
from lamina.diff import diff
from lamina.errors import SpecInvalid
from lamina.facts import HostState
from lamina.plan import plan
from lamina.runner import host_variables

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

KEYS = [
    "state_dir", "volumes", "overlays", "binds", "images", "containers",  # sections
    "labels", "driver_opts", "type", "o", "device", "state", "purge", "force",
    "lower", "upper", "work", "target", "label", "mounts", "source", "read_only", "create_source",
    "from", "steps", "copy", "add", "run", "env", "workdir", "src", "dest", "mode", "owner",
    "image", "volume", "bind", "tmpfs", "nocopy", "create_host_path", "size",
    "v1", "web", "base", "c1", "a", "-x", "PATH", "<<",  # names
]
VALUES = [
    "/srv/a", "/srv/b", "/srv/up", "/srv/work", "/srv/m", "/", "//", "/proc/x", "/dev/shm", "/srv/../etc",
    "/srv/a b", "/srv/a,b", "/srv/a:b", "rel/path", "v1:/data", "v1:/data:ro", "/srv/s:/s:rw", "a:b:c:d:e",
    "present", "absent", "maybe", "volume", "bind", "tmpfs", "scratch", "base", "web", "docker-archive:x.tar",
    "oci-layout:", "lamina:x", "lamina:../x", "0:0", "root", "64m", "1e400", "0o755", "true", "",
    "{{ inventory_hostname }}", "{{ undefined_var }}", "{% if %}", "*alias", "&anchor", "!!int x", "\x00",
]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(VALUES), st.text(max_size=20),
)
TREES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=5),
    ),
    max_leaves=30,
)
SPECS = st.dictionaries(st.sampled_from(KEYS[:6]), TREES, max_size=4)  # a mapping of (mostly) real sections

# Spec-shaped: every object has the keys it needs, drawn from small pools of mostly good
# values, so that most examples get past the models to the whole-spec checks, images,
# plan and diff.
NAMES = st.sampled_from(["v1", "v2", "web", "db", "base", "app", "c1", "c2"])
PATHS = st.sampled_from([
    "/srv/a", "/srv/b", "/srv/a/x", "/srv/up", "/srv/work", "/srv/m", "/srv/m/in", "/mnt/x", "/mnt/y",
    "/var/lib/lamina/x", "/var/lib", "/srv/a b", "/srv/a,b", "/srv/$(id)", "/srv/it's", "/proc/x", "/", "rel",
])
INNER = st.sampled_from(["/data", "/data/sub", "/cache", "/", "/a b", "/x:y", "rel"])
MOUNTS = st.one_of(
    st.builds(lambda s, t, m: f"{s}:{t}{m}", st.one_of(NAMES, PATHS), INNER, st.sampled_from(["", ":ro", ":rw", ":x"])),
    st.fixed_dictionaries({"type": st.sampled_from(["volume", "bind", "tmpfs"]), "target": INNER},
                          optional={"source": st.one_of(NAMES, PATHS), "read_only": st.booleans(),
                                    "tmpfs": st.fixed_dictionaries({}, optional={
                                        "size": st.one_of(st.integers(-1, 2**64), st.sampled_from(["64m", "1%", "x"])),
                                        "mode": st.integers(-1, 0o17777)})}),
)
STATE = st.sampled_from(["present", "absent"])
OBJECT_SPECS = st.fixed_dictionaries({}, optional={
    "state_dir": st.sampled_from(["/var/lib/lamina", "/srv/state", "/srv/m", "/tmp"]),
    "volumes": st.dictionaries(NAMES, st.fixed_dictionaries({}, optional={
        "labels": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2), "state": STATE,
        "purge": st.booleans(),
        "driver_opts": st.fixed_dictionaries({"type": st.sampled_from(["tmpfs", "nfs", "Bad"])},
                                             optional={"o": st.sampled_from(["size=1m", "a,b", "x\ny"]),
                                                       "device": st.sampled_from(["srv:/x", "tmpfs"])})}),
        max_size=2),
    "overlays": st.dictionaries(NAMES, st.fixed_dictionaries(
        {"lower": st.lists(PATHS, min_size=1, max_size=3), "target": PATHS},
        optional={"upper": PATHS, "work": PATHS, "label": st.text(max_size=6), "state": STATE, "purge": st.booleans(),
                  "mounts": st.lists(MOUNTS, max_size=3)}), max_size=2),
    "binds": st.dictionaries(NAMES, st.fixed_dictionaries(
        {"source": PATHS, "target": PATHS},
        optional={"read_only": st.booleans(), "create_source": st.booleans(), "state": STATE}), max_size=2),
    "images": st.dictionaries(NAMES, st.fixed_dictionaries({}, optional={
        "from": st.one_of(NAMES, st.sampled_from(["scratch", "docker-archive:x.tar", "lamina:gone", "oci-layout:"])),
        "steps": st.lists(st.one_of(
            st.fixed_dictionaries({"run": st.sampled_from(["true", "", "echo hi > /f"])},
                                  optional={"env": st.dictionaries(st.sampled_from(["A", "PATH", "1x"]),
                                                                   st.sampled_from(["b", "x\ny"]), max_size=2),
                                            "workdir": PATHS}),
            st.fixed_dictionaries({"copy": st.fixed_dictionaries({"src": st.sampled_from(["site", "x.tar", "gone"]),
                                                                   "dest": PATHS})}),
            st.fixed_dictionaries({"add": st.fixed_dictionaries({"src": st.sampled_from(["x.tar", "gone"])})}),
        ), max_size=3)}), max_size=3),
    "containers": st.dictionaries(NAMES, st.fixed_dictionaries(
        {"image": NAMES}, optional={"target": PATHS, "mounts": st.lists(MOUNTS, max_size=2), "state": STATE}),
        max_size=2),
})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    (d / "files").mkdir()
    (d / "files" / "x.tar").write_bytes(b"not a tar")
    (d / "files" / "site").mkdir()
    (d / "files" / "site" / "index.html").write_text("hi\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAMINA_CACHE_DIR", str(d / "cache"))
        mp.setenv("LAMINA_IMAGES", str(d / "images"))
        yield d


def kind(message: str) -> str:
    for prefix, what in (("not UTF-8", "encoding"), ("YAML:", "YAML"), ("template:", "template"),
                         ("a spec must be", "not a mapping")):
        if message.startswith(prefix):
            return what
    return "by the models or the whole-spec checks"


def load_everything(path: Path) -> None:
    """What `lamina validate` and `plan` do before touching a host; checks the outcome."""
    try:
        loaded = loader.load([path], host_variables("fuzz-host", {}))
        resolved = images.resolve(loaded) if loaded.spec.images else {}
    except SpecInvalid as e:
        event(f"refused: {kind(e.errors[0].message)}")
        assert e.errors
        for err in e.errors:
            assert err.file == str(path)
            assert err.line >= 1 and err.col >= 1
            assert err.message and err.message.isprintable(), repr(err.message)
            assert "\n" not in str(err)
        return
    event("valid")
    diff(plan(loaded.spec, resolved), HostState())  # a spec that validates must plan


@SETTINGS
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes(workdir, data):
    path = workdir / "bytes.yml"
    path.write_bytes(data)
    load_everything(path)


@SETTINGS
@given(data=st.text(alphabet=st.sampled_from(string.printable + "\x00\x85\u2028é{}%#&*!|>-:'\"[],"), max_size=300))
def test_arbitrary_text(workdir, data):
    path = workdir / "text.yml"
    path.write_text(data)
    load_everything(path)


@SETTINGS
@given(spec=SPECS)
def test_specs_built_from_real_keys(workdir, spec):
    path = workdir / "tree.yml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    load_everything(path)


@SETTINGS
@given(spec=SPECS, cut=st.integers(min_value=0, max_value=400), junk=st.text(max_size=6))
def test_specs_with_damaged_text(workdir, spec, cut, junk):
    """Real-looking YAML with a few characters spliced in: syntax errors at every position."""
    text = yaml.safe_dump(spec, allow_unicode=True, default_flow_style=None)
    cut = min(cut, len(text))
    path = workdir / "damaged.yml"
    path.write_text(text[:cut] + junk + text[cut + len(junk) // 2:])
    load_everything(path)


@SETTINGS
@given(spec=OBJECT_SPECS)
def test_spec_shaped_objects(workdir, spec):
    path = workdir / "objects.yml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    load_everything(path)


def parsed(parse, text: str):
    """What a YAML parser made of the text: the data and every position, or the errors."""
    try:
        doc = parse(text, "f.yml")
    except SpecInvalid as e:
        return [str(err) for err in e.errors]
    return doc.data, doc.values, doc.keys


@SETTINGS
@given(spec=SPECS, cut=st.integers(min_value=0, max_value=400),
       junk=st.text(alphabet=st.sampled_from(string.printable + "\x00\x85\u2028\udc80é日{}%#&*!|>-:'\"[],<"),
                    max_size=6))
def test_libyaml_parses_as_the_pure_python_parser(spec, cut, junk):
    """The fast path (libyaml composes the nodes) gives the same values at the same lines and
    columns as PyYAML's pure-Python parser, and the same errors (it defers to it for those).
    Where the two parsers disagree on the syntax, libyaml (YAML's reference parser) may accept
    what the Python one refuses — e.g. a '?' inside a plain scalar in a flow mapping, `{a: n?b}`,
    which YAML 1.2 allows."""
    text = yaml.safe_dump(spec, allow_unicode=True, default_flow_style=None)
    cut = min(cut, len(text))
    text = text[:cut] + junk + text[cut + len(junk) // 2:]
    fast, pure = parsed(loader.parse, text), parsed(loader._parse, text)
    if isinstance(pure, list) and not isinstance(fast, list):
        event("only libyaml accepts it")
        assert pure[0].startswith("f.yml:") and ": YAML: " in pure[0]  # a syntax matter, not a value's
        return
    assert fast == pure


def test_libyaml_is_there():
    """PyYAML's wheels carry libyaml: without it every plan parses at a tenth of the speed."""
    assert loader._FastLoader is yaml.CSafeLoader
