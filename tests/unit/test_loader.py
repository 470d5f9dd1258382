"""Spec loading and validation: every error is one located line; good specs load."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from lamina import loader
from lamina.errors import SpecInvalid
from lamina.spec import json_schema

GOOD = """\
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
      - {type: tmpfs, target: /tmp, tmpfs: {size: 16m}}
      - {type: volume, source: cache, target: /cache, volume: {nocopy: true}}
binds:
  share: {source: /srv/share, target: /mnt/share, read_only: true, create_source: true}
"""


def write(tmp_path: Path, text: str, name: str = "spec.yml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def errors(tmp_path: Path, text: str, variables=None) -> list[str]:
    with pytest.raises(SpecInvalid) as e:
        loader.load([write(tmp_path, text)], variables)
    return [str(err).split(":", 1)[1] for err in e.value.errors]  # drop the directory part


def test_good_spec_loads(tmp_path):
    spec = loader.load([write(tmp_path, GOOD)]).spec
    web = spec.overlays["web"]
    assert web.lower == ["/srv/l3", "/srv/l2", "/srv/l1"]
    assert [(m.type, m.source, m.target, m.read_only) for m in web.mounts] == [
        ("volume", "data", "/data", False),
        ("bind", "/srv/share", "/share", True),
        ("tmpfs", None, "/tmp", False),
        ("volume", "cache", "/cache", False),
    ]
    assert web.mounts[1].bind.create_host_path  # short syntax creates the source, like -v
    assert web.mounts[3].volume.nocopy
    assert spec.state_dir == "/var/lib/lamina"


def test_misspelled_key_names_file_line_col_and_suggests(tmp_path):
    msgs = errors(tmp_path, GOOD.replace("    upper:", "    uper:"))
    assert "6:5: overlays.web.uper: unknown key 'uper' (did you mean 'upper'?)" in msgs


@pytest.mark.parametrize(("text", "expected"), [
    ("overlays: {web: {lower: [rel], target: /x/y}}",
     "1:26: overlays.web.lower[0]: path 'rel' must be absolute"),
    ("overlays: {web: {lower: [/a/../b, /c], target: /x/y}}",
     "1:26: overlays.web.lower[0]: path '/a/../b' must not contain '..'"),
    ("binds: {b1: {source: /a, target: /}}", "1:34: binds.b1.target: target must not be '/'"),
    ("binds: {b1: {source: /a, target: /proc/x}}",
     "1:34: binds.b1.target: target '/proc/x' lies under /proc, which lamina never mounts over"),
    ("binds: {b1: {source: /a, target: /sys}}",
     "1:34: binds.b1.target: target '/sys' lies under /sys, which lamina never mounts over"),
    ("volumes: {x: {}}",
     "1:11: volumes.x: invalid name 'x': use 2+ characters [a-zA-Z0-9_.-], starting with a letter or digit"),
    ("volumes: {'-bad': {}}",
     "1:11: volumes.-bad: invalid name '-bad': use 2+ characters [a-zA-Z0-9_.-], starting with a letter or digit"),
    ("binds: {b1: {source: /a, target: /b, read_only: 'yes'}}",
     "1:49: binds.b1.read_only: input should be a valid boolean (got a string)"),
    ("overlays: {web: {lower: /a, target: /x/y}}",
     "1:25: overlays.web.lower: input should be a valid list (got a string)"),
    ("overlays: {web: {lower: [/a, /b]}}", "1:17: overlays.web: missing required key 'target'"),
    ("overlays: []", "1:11: overlays: expected a mapping (got a list)"),
    ("- a", "1:1: a spec must be a mapping (state_dir, volumes, overlays, binds)"),
    ("binds: {b1: {source: /a, target: /b, state: gone}}",
     "1:45: binds.b1.state: input should be 'present' or 'absent' (got a string)"),
    ("overlays: {web: {lower: ['/a,b', /c], target: /x/y}}",
     "1:26: overlays.web.lower[0]: path '/a,b' contains ',', ':', '\\' or white space, which overlay mount options cannot carry"),
    ("overlays: {web: {lower: [/a, /b], target: /x/y, mounts: ['nocolon']}}",
     "1:58: overlays.web.mounts[0]: mount 'nocolon': expected 'VOLUME:/path[:ro]' or '/host/path:/path[:ro]'"),
    ("binds: {b1: {source: \"/a\\nb\", target: /b}}",
     "1:22: binds.b1.source: path '/a\\nb' contains a control character"),
])
def test_bad_value_is_located(tmp_path, text, expected):
    assert expected in errors(tmp_path, text)


@pytest.mark.parametrize(("text", "expected"), [
    ("a: [1, 2", "1:9: YAML: expected ',' or ']', but got '<stream end>'"),
    ("a: 1\na: 2", "2:1: a: duplicate key 'a'"),
    ("{% if %}", "1:1: template: Expected an expression, got 'end of statement block'"),
])
def test_syntax_errors_are_located(tmp_path, text, expected):
    msgs = errors(tmp_path, text)
    assert any(m.endswith(expected.split(": ", 1)[1]) and m.startswith(expected.split(":")[0])
               for m in msgs), msgs


@pytest.mark.parametrize(("text", "expected"), [
    ("overlays: {web: {lower: [/a], target: /x/y}}",
     "overlays.web.lower: a read-only overlay (no upper) needs at least two lowers"),
    ("overlays: {web: {lower: [/a, /b], upper: /u, target: /x/y}}",
     "overlays.web: missing required key 'work' (needed with upper)"),
    ("overlays: {web: {lower: [/a], upper: /a/up, work: /w, target: /x/y}}",
     "overlays.web.upper: /a/up overlaps lower[0] /a"),
    ("overlays: {web: {lower: [/a], upper: /u, work: /u/w, target: /x/y}}",
     "overlays.web.work: /u/w and upper /u must be separate directories"),
    ("overlays: {web: {lower: [/a], upper: /u, work: /w, target: /a/m}}",
     "overlays.web.target: /a/m overlaps lower /a"),
    ("overlays: {web: {lower: [/a, /a], target: /x/y}}",
     "overlays.web.lower: the same directory is listed twice"),
    ("binds: {b1: {source: /a, target: /m}, b2: {source: /b, target: /m}}",
     "binds.b2.target: /m is already the target of binds.b1.target"),
    ("overlays: {web: {lower: [/a, /b], target: /m, mounts: ['v1:/d', 'v2:/d']}}",
     "overlays.web.mounts[1]: /m/d is already the target of overlays.web.mounts[0]"),
    ("overlays:\n  aa: {lower: [/a], upper: /u, work: /w, target: /m1}\n"
     "  bb: {lower: [/b], upper: /u, work: /w2, target: /m2}",
     "overlays.bb.upper: /u is also used by overlays.aa.upper; two overlays must not share upper or work"),
    ("volumes: {data: {state: absent}}\noverlays: {web: {lower: [/a, /b], target: /m, mounts: ['data:/d']}}",
     "overlays.web.mounts[0]: volume 'data' is declared absent but mounted here"),
    ("overlays: {web: {lower: [/a, /b], target: /m, mounts: [{type: tmpfs, source: x, target: /t}]}}",
     "overlays.web.mounts[0]: a tmpfs mount takes no source"),
    ("overlays: {web: {lower: [/a, /b], target: /m, mounts: [{type: bind, target: /t}]}}",
     "overlays.web.mounts[0]: missing required key 'source'"),
    ("binds: {b1: {source: /a, target: /a}}", "binds.b1: source and target are the same path"),
])
def test_whole_spec_checks(tmp_path, text, expected):
    msgs = errors(tmp_path, text)
    assert any(m.split(": ", 1)[1] == expected for m in msgs), msgs


def test_mount_data_over_a_page_is_refused(tmp_path):
    lowers = ", ".join(f"/srv/layers/{'x' * 60}{i}" for i in range(80))
    msgs = errors(tmp_path, f"overlays: {{web: {{lower: [{lowers}], target: /m}}}}")
    assert any("the kernel silently truncates mount data" in m for m in msgs)


def test_all_errors_reported_at_once_sorted(tmp_path):
    msgs = errors(tmp_path, "binds:\n  b1: {source: a, target: b}\n  b2: {sourc: /a, target: /b}\n")
    assert [m.split(":")[0] for m in msgs] == ["2", "2", "3", "3"]


def test_objects_merge_across_files_and_duplicates_fail(tmp_path):
    a = write(tmp_path, "volumes: {v1: {}}\nstate_dir: /var/lib/x", "a.yml")
    b = write(tmp_path, "volumes: {v2: {}}", "b.yml")
    spec = loader.load([a, b]).spec
    assert set(spec.volumes) == {"v1", "v2"} and spec.state_dir == "/var/lib/x"
    c = write(tmp_path, "volumes:\n  v1: {}", "c.yml")
    with pytest.raises(SpecInvalid) as e:
        loader.load([a, c])
    assert str(e.value.errors[0]).endswith(f"c.yml:2:3: volumes.v1: already defined in {a}:1")


def test_templates_see_host_data(tmp_path):
    p = write(tmp_path, "binds: {b1: {source: '{{ src }}', target: /m/{{ host.name }}}}")
    spec = loader.load([p], {"src": "/data", "host": {"name": "lab1"}}).spec
    assert spec.binds["b1"].target == "/m/lab1"
    with pytest.raises(SpecInvalid) as e:
        loader.load([p], {"host": {"name": "lab1"}})
    assert "1:1: template: 'src' is undefined" in str(e.value)


def test_a_template_that_renders_a_lone_surrogate_is_a_located_error(tmp_path):
    """Host data can carry what no UTF-8 file can (a surrogate-escaped byte): libyaml cannot
    even take such text, and the pure-Python parser says where it is."""
    p = write(tmp_path, "binds: {b1: {source: /srv/{{ name }}, target: /mnt/b}}")
    with pytest.raises(SpecInvalid) as e:
        loader.load([p], {"name": "\udc80"})
    assert "1:27: YAML: unacceptable character #xdc80" in str(e.value)


def test_non_utf8_and_missing_file(tmp_path):
    p = tmp_path / "bin.yml"
    p.write_bytes(b"volumes:\n  v\xff: {}\n")
    with pytest.raises(SpecInvalid) as e:
        loader.load([p])
    assert str(e.value).endswith("bin.yml:2:4: not UTF-8 (byte 0xff)")
    with pytest.raises(SpecInvalid) as e:
        loader.load([tmp_path / "nope.yml"])
    assert "nope.yml:1:1: cannot read" in str(e.value)


def test_schema_is_json_and_knows_every_section():
    schema = json.loads(json.dumps(json_schema()))
    assert set(schema["properties"]) == {"state_dir", "volumes", "overlays", "binds", "images", "containers"}
    assert schema["$defs"]["Overlay"]["additionalProperties"] is False
    items = schema["$defs"]["Overlay"]["properties"]["mounts"]["items"]
    assert items["anyOf"][0]["type"] == "string"


def test_demo_role_is_valid():
    spec = loader.load([Path(__file__).parents[2] / "roles/demo/spec.yml"],
                       {"inventory_hostname": "lab1", "host": {"name": "lab1", "data": {}}}).spec
    assert spec.overlays["demo"].lower == ["/srv/demo/low3", "/srv/demo/low2", "/srv/demo/low1"]
