"""Spec files → a validated `Spec`: render (Jinja2), parse (YAML, keeping positions),
validate (pydantic models in `spec.py`), then check what spans several objects.

Every problem becomes a `SpecError` with file, line and column; all of a spec's
problems are reported at once. Nothing here touches a host.
"""

from __future__ import annotations

import difflib
import posixpath
import re
import reprlib
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from . import MAX_MOUNT_DATA  # noqa: F401  (re-exported)
from .errors import SpecError, SpecInvalid
from .spec import Overlay, Spec

Loc = tuple[str | int, ...]
Mark = tuple[int, int]  # 1-based line and column


@dataclass
class Document:
    """One parsed file: plain data plus the position of every value and key."""

    file: str
    data: Any
    values: dict[Loc, Mark] = field(default_factory=dict)
    keys: dict[Loc, Mark] = field(default_factory=dict)

    def mark(self, loc: Loc, key: bool = False) -> Mark:
        if key and loc in self.keys:
            return self.keys[loc]
        while loc not in self.values and loc:
            loc = loc[:-1]
        return self.values.get(loc, (1, 1))

    def error(self, loc: Loc, message: str, key: bool = False) -> SpecError:
        line, col = self.mark(loc, key)
        return SpecError(self.file, line, col, message)


@dataclass(frozen=True)
class LoadedSpec:
    spec: Spec
    docs: dict[Loc, Document]  # (section, name) → the document that defined it

    def error(self, loc: Loc, message: str, key: bool = False) -> SpecError:
        doc = self.docs.get(loc[:2]) or next(iter(self.docs.values()), None)
        if doc is None:
            return SpecError("<spec>", 1, 1, message)
        return doc.error(loc, message, key)


def dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, str) and len(part) > 128:  # a 10 MB key
            part = part[:40] + "..."
        if isinstance(part, str) and not part.isprintable():
            part = repr(part)  # a key with a newline would break the one-line error
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def one_line(error: SpecError) -> SpecError:
    """Every error is one line, whatever text (a file name, a library's message) it quotes."""
    if error.message.isprintable() and error.file.isprintable():
        return error
    clean = lambda s: "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)  # noqa: E731
    return SpecError(clean(error.file), error.line, error.col, clean(error.message))


# --- render ---------------------------------------------------------------------------


@cache
def _sandbox():
    """A Jinja2 environment in which templates cannot reach Python internals (validate touches
    nothing), nor compute numbers or strings that would never finish (`10 ** 10**10`,
    `'x' * 10**12`). Jinja2 is imported only for specs that use it (~70 ms)."""
    import jinja2.sandbox

    class Sandbox(jinja2.sandbox.SandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})
        LIMIT = 10_000_000

        def call_binop(self, context, operator, left, right):
            if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 \
                    and right * max(abs(left), 2).bit_length() > self.LIMIT:
                raise jinja2.sandbox.SecurityError(f"{left} ** {right} is too big")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > self.LIMIT:
                        raise jinja2.sandbox.SecurityError(f"a sequence repeated {n} times is too long")
            return super().call_binop(context, operator, left, right)

    return Sandbox(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)


def render(text: str, file: str, variables: Mapping[str, Any]) -> str:
    """Render Jinja2 in a spec file; plain YAML passes through untouched."""
    if "{{" not in text and "{%" not in text and "{#" not in text:
        return text
    import jinja2

    try:
        return _sandbox().from_string(text).render(**variables)
    except jinja2.TemplateSyntaxError as e:
        raise SpecInvalid([SpecError(file, e.lineno or 1, 1, f"template: {e.message}")]) from None
    except jinja2.TemplateError as e:
        raise SpecInvalid([SpecError(file, _template_line(e), 1, f"template: {e}")]) from None
    except Exception as e:  # 1/0, 'a' + 1, include without a loader, ...
        raise SpecInvalid([SpecError(file, _template_line(e), 1, f"template: {type(e).__name__}: {e}")]) from None


def _template_line(exc: BaseException) -> int:
    """Jinja2 rewrites tracebacks so template frames carry template line numbers."""
    line = 1
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


# --- parse ----------------------------------------------------------------------------


# Aliases let a few lines of YAML stand for billions of values ("billion laughs");
# a spec has far fewer values than this.
MAX_VALUES = 200_000


# libyaml's parser (PyYAML's C extension, in its wheels) composes nodes ~10x faster than the
# pure-Python one (a 200-container spec: 60 → 10 ms); the values come from the same Python
# resolver and constructor. Its error messages are worded differently, so a document it
# refuses is parsed again by the pure-Python loader, whose messages the user gets.
_FastLoader = getattr(yaml, "CSafeLoader", None)


def parse(text: str, file: str) -> Document:
    """YAML → plain data, remembering where each value and key stood."""
    if _FastLoader is not None:
        doc = Document(file, None)
        try:
            loader = _FastLoader(text)
            try:
                node = loader.get_single_node()
                doc.data = {} if node is None else _build(loader, node, (), doc, set())
            finally:
                loader.dispose()
            return doc
        except Exception:  # noqa: BLE001 - YAML errors, nesting, a lone surrogate a template made...
            pass  # ... are said again below, in the words of the pure-Python loader
    return _parse(text, file)


def _parse(text: str, file: str) -> Document:
    doc = Document(file, None)
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # checks every character first
        node = loader.get_single_node()
        if node is None:
            doc.data = {}
            return doc
        doc.data = _build(loader, node, (), doc, set())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = e.problem or e.context or "invalid YAML"
        raise SpecInvalid([SpecError(file, line, col, f"YAML: {problem}")]) from None
    except yaml.reader.ReaderError as e:  # a character YAML does not allow (control characters)
        line = text.count("\n", 0, e.position) + 1
        col = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        raise SpecInvalid([SpecError(file, line, col, f"YAML: unacceptable character #x{e.character:04x}:"
                                     f" {e.reason}")]) from None
    except yaml.YAMLError as e:
        raise SpecInvalid([SpecError(file, 1, 1, f"YAML: {e}")]) from None
    except RecursionError:
        mark = loader.get_mark()
        raise SpecInvalid([SpecError(file, mark.line + 1, mark.column + 1, "YAML: nested too deeply")]) from None
    except ValueError:  # the scanner's chr() on an escape past U+10FFFF ("\U00110000")
        mark = loader.get_mark()
        raise SpecInvalid([SpecError(file, mark.line + 1, mark.column + 1,
                                     "YAML: invalid Unicode character escape code")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return doc


def _construct(loader: yaml.SafeLoader, node: yaml.Node, doc: Document) -> Any:
    """A scalar (or a complex key): PyYAML raises plain ValueError, KeyError ... for values
    its resolver accepted but cannot build (2001-13-45, !!int abc, an int of 5000 digits)."""
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError:
        raise
    except Exception as e:
        value = node.value if isinstance(node, yaml.ScalarNode) else node.tag
        shown = value if len(value) <= 40 else value[:40] + "..."
        why = f": {str(e).split(';')[0]}" if isinstance(e, ValueError) else ""
        raise SpecInvalid([SpecError(doc.file, node.start_mark.line + 1, node.start_mark.column + 1,
                                     f"YAML: cannot read {shown!r} as {node.tag.rsplit(':', 1)[-1]}{why}")]) from None


def _build(loader: yaml.SafeLoader, node: yaml.Node, loc: Loc, doc: Document, active: set[int]) -> Any:
    """`active`: the nodes being built around this one; meeting one again is a recursive alias."""
    where = (node.start_mark.line + 1, node.start_mark.column + 1)
    if id(node) in active:
        raise SpecInvalid([SpecError(doc.file, *where, f"YAML: {dotted(loc) or 'spec'}: an alias refers to itself")])
    if len(doc.values) >= MAX_VALUES:
        raise SpecInvalid([SpecError(doc.file, *where, f"YAML: more than {MAX_VALUES} values"
                                     " (aliases expanding too much?)")])
    doc.values[loc] = where
    if not isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        return _construct(loader, node, doc)
    if node.tag not in ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"):  # !!set, !!omap, !!python/...
        raise SpecInvalid([SpecError(doc.file, *where, f"YAML: {dotted(loc) or 'spec'}: tag {node.tag!r}"
                                     " is not supported; write a plain mapping or list")])
    active.add(id(node))
    try:
        if isinstance(node, yaml.SequenceNode):
            return [_build(loader, item, loc + (i,), doc, active) for i, item in enumerate(node.value)]
        merged = getattr(node, "lamina_merged", None)  # an aliased node is built again, already flat
        if merged is None:
            n_explicit = sum(k.tag != "tag:yaml.org,2002:merge" for k, _ in node.value)
            loader.flatten_mapping(node)  # YAML merge keys (<<): merged pairs first, then the explicit ones
            merged = node.lamina_merged = len(node.value) - n_explicit
        out: dict[str, Any] = {}
        explicit: set[str] = set()
        for i, (key_node, value_node) in enumerate(node.value):
            key = _construct(loader, key_node, doc)
            key_mark = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if not isinstance(key, str):
                raise SpecInvalid([SpecError(doc.file, *key_mark,
                                             f"{dotted(loc) or 'spec'}: key {reprlib.repr(key)} must be a string")])
            # Merged keys give way to later ones, as YAML says; explicit keys must be unique.
            if key in explicit:
                raise SpecInvalid(
                    [SpecError(doc.file, *key_mark, f"{dotted(loc + (key,))}: duplicate key {key!r}")]
                )
            if i >= merged:
                explicit.add(key)
            doc.keys[loc + (key,)] = key_mark
            out[key] = _build(loader, value_node, loc + (key,), doc, active)
        return out
    finally:
        active.discard(id(node))


# --- validate -------------------------------------------------------------------------


def read_text(path: Path) -> str:
    from . import planstore

    planstore.note(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SpecInvalid([SpecError(str(path), 1, 1, f"cannot read: {e.strerror}")]) from None
    except ValueError as e:  # a NUL in the name
        raise SpecInvalid([SpecError(str(path), 1, 1, f"cannot read: {e}")]) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise SpecInvalid(
            [SpecError(str(path), line, col, f"not UTF-8 (byte 0x{raw[e.start]:02x})")]
        ) from None


def load(paths: Iterable[str | Path], variables: Mapping[str, Any] | None = None) -> LoadedSpec:
    """Load, render, validate and merge spec files; raise SpecInvalid with every error."""
    specs: list[tuple[Document, Spec]] = []
    errors: list[SpecError] = []
    for p in paths:
        path = Path(p)
        try:
            text = render(read_text(path), str(path), variables or {})
            specs.append(_parsed(text, str(path)))
        except SpecInvalid as e:
            errors.extend(e.errors)
    if errors:
        raise SpecInvalid([one_line(e) for e in sorted(errors, key=lambda e: (e.file, e.line, e.col))])
    try:
        loaded = merge(specs)
    except SpecInvalid as e:
        raise SpecInvalid([one_line(err) for err in e.errors]) from None
    errors = check_spec(loaded)
    if errors:
        raise SpecInvalid([one_line(e) for e in errors])
    return loaded


@lru_cache(maxsize=64)
def _parsed(text: str, file: str) -> tuple[Document, Spec]:
    """Parse and validate one rendered file. Many hosts render a file to the same text:
    it is read once (neither the document nor the spec is ever modified)."""
    doc = parse(text, file)
    return doc, validate(doc)


def validate(doc: Document) -> Spec:
    if not isinstance(doc.data, dict):
        raise SpecInvalid([doc.error((), "a spec must be a mapping (state_dir, volumes, overlays, binds)")])
    try:
        return Spec.model_validate(doc.data)
    except ValidationError as e:
        raise SpecInvalid([_pydantic_error(doc, err) for err in e.errors()]) from None


def _pydantic_error(doc: Document, err: Mapping[str, Any]) -> SpecError:
    loc: Loc = tuple(p for p in err["loc"] if p != "[key]")
    on_key = "[key]" in err["loc"]  # a bad name: point at the name, not its body
    kind, where = err["type"], dotted(loc)
    if kind == "extra_forbidden":
        key = str(loc[-1])
        parent = _model_at(loc[:-1])
        hint = ""
        if parent is not None:
            known = _field_names(parent)
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
        return doc.error(loc, f"{where}: unknown key {key!r}{hint}", key=True)
    if kind == "missing":
        return doc.error(loc[:-1], f"{dotted(loc[:-1]) or 'spec'}: missing required key {loc[-1]!r}")
    msg = err["msg"].removeprefix("Value error, ")
    if kind in ("model_type", "dict_type"):
        msg = "expected a mapping" + (" or a short-syntax string" if loc[-2:-1] == ("mounts",) else "")
    if kind.endswith("_type") or kind == "literal_error":
        got = type(err.get("input")).__name__
        msg = f"{msg[0].lower()}{msg[1:]} (got {_yaml_type(got)})"
    return doc.error(loc, f"{where}: {msg}", key=on_key)


def _yaml_type(pytype: str) -> str:
    return {"dict": "a mapping", "list": "a list", "str": "a string", "int": "an integer",
            "bool": "a boolean", "NoneType": "nothing", "float": "a number"}.get(pytype, pytype)


def _field_names(model: Any) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _model_at(loc: Loc) -> Any:
    """The model class that the mapping at loc is validated against, found by walking
    the field annotations of the spec models (lists and dicts step over their index)."""
    import typing

    from pydantic import BaseModel

    from .spec import Spec

    def models(tp: Any) -> list[Any]:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return [tp]
        return [m for arg in typing.get_args(tp) for m in models(arg)]

    current: Any = Spec
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = {f.alias or name: f for name, f in current.model_fields.items()}
            if part not in fields:
                return None
            current = fields[part].annotation
        else:  # a list or dict of models: the index or key selects one
            found = models(current)
            if not found:
                return None
            current = found[0]
    found = models(current)
    return found[0] if found else None


def merge(specs: list[tuple[Document, Spec]]) -> LoadedSpec:
    """Several files make one spec; an object may be defined in one file only."""
    errors: list[SpecError] = []
    merged: dict[str, dict[str, Any]] = {k: {} for k in ("volumes", "overlays", "binds", "images", "containers")}
    owners: dict[Loc, Document] = {}
    state_dir: tuple[str, Document] | None = None
    for doc, spec in specs:
        if "state_dir" in doc.data:
            if state_dir and state_dir[0] != spec.state_dir:
                errors.append(doc.error(("state_dir",), f"state_dir: {spec.state_dir!r} conflicts"
                                        f" with {state_dir[0]!r} set in {state_dir[1].file}"))
            state_dir = (spec.state_dir, doc)
        for section in merged:
            for name, obj in getattr(spec, section).items():
                if (section, name) in owners:
                    first = owners[(section, name)]
                    errors.append(doc.error((section, name), f"{section}.{name}: already defined"
                                            f" in {first.file}:{first.mark((section, name), key=True)[0]}", key=True))
                    continue
                owners[(section, name)] = doc
                merged[section][name] = obj
    if errors:
        raise SpecInvalid(errors)
    spec = Spec.model_construct(
        state_dir=state_dir[0] if state_dir else Spec.model_fields["state_dir"].default, **merged
    )
    return LoadedSpec(spec, owners)


# --- whole-spec checks ----------------------------------------------------------------


def within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def inner_target(overlay: Overlay, target: str) -> str:
    return posixpath.join(overlay.target, target.lstrip("/"))


def check_spec(loaded: LoadedSpec) -> list[SpecError]:
    spec, errors = loaded.spec, []
    err = lambda loc, msg: errors.append(loaded.error(loc, msg))  # noqa: E731
    targets: dict[str, Loc] = {}

    def claim(target: str, loc: Loc) -> None:
        if target in targets:
            err(loc, f"{dotted(loc)}: {target} is already the target of {dotted(targets[target])}")
        else:
            targets[target] = loc

    uppers: dict[str, Loc] = {}
    for name, ov in spec.overlays.items():
        base: Loc = ("overlays", name)
        if ov.state == "present":
            claim(ov.target, base + ("target",))
        _check_overlay(ov, base, err)
        for d, key in ((ov.upper, "upper"), (ov.work, "work")):
            if d and ov.state == "present":
                if d in uppers and uppers[d][:2] != base:  # upper == work: _check_overlay says it
                    err(base + (key,), f"{dotted(base + (key,))}: {d} is also used by"
                        f" {dotted(uppers[d])}; two overlays must not share upper or work")
                uppers[d] = base + (key,)
        for i, m in enumerate(ov.mounts):
            loc = base + ("mounts", i)
            if ov.state == "present":
                claim(inner_target(ov, m.target), loc)
            _check_mount(spec, m, loc, err)
    for name, b in spec.binds.items():
        if b.state == "present":
            claim(b.target, ("binds", name, "target"))
        if b.source == b.target:
            err(("binds", name, "target"), f"binds.{name}: source and target are the same path")
    for name, image in spec.images.items():
        _check_image(spec, name, image, err)
    for name, c in spec.containers.items():
        base = ("containers", name)
        if c.image not in spec.images:
            err(base + ("image",), f"containers.{name}.image: no image {c.image!r} in the spec")
        target = container_target(spec, name)
        if c.state == "present":
            claim(target, base + ("target",))
        for i, m in enumerate(c.mounts):
            loc = base + ("mounts", i)
            if c.state == "present":
                claim(posixpath.join(target, m.target.lstrip("/")), loc)
            _check_mount(spec, m, loc, err)
    _check_nesting(spec, targets, uppers, err)
    return errors


def _check_nesting(spec: Spec, targets: dict[str, Loc], uppers: dict[str, Loc], err) -> None:
    """Mounts of different objects nested in ways that cannot work. A mount inside an
    overlay's upper or work dir changes a layer under a live overlay (undefined, says the
    kernel); an upper or work dir inside an overlay's merged tree would be on overlayfs,
    which overlayfs refuses; a mount in or over the state dir hides lamina's own store."""
    sd = spec.state_dir
    trees = {t: loc for t, loc in targets.items() if loc[0] in ("overlays", "containers") and loc[-1] == "target"}
    for t, loc in targets.items():
        for u, uloc in uppers.items():
            if loc[:2] != uloc[:2] and within(t, u):
                err(loc, f"{dotted(loc)}: {t} lies inside {dotted(uloc)} {u}; nothing may be mounted"
                    " in an overlay's upper or work dir")
        default = loc[0] == "containers" and spec.containers[loc[1]].target is None
        if loc[-1] == "target" and not default and (within(t, sd) or within(sd, t)):
            err(loc, f"{dotted(loc)}: {t} " + ("lies inside" if within(t, sd) else "would hide")
                + f" lamina's state_dir {sd}")
    for u, uloc in uppers.items():
        for t, loc in trees.items():
            if loc[:2] != uloc[:2] and within(u, t):
                err(uloc, f"{dotted(uloc)}: {u} lies in the merged tree of {dotted(loc)}; overlayfs"
                    " cannot use an overlay as upper or work dir")
        for other, oloc in uppers.items():
            if oloc[:2] != uloc[:2] and u != other and within(u, other):
                err(uloc, f"{dotted(uloc)}: {u} lies inside {dotted(oloc)} {other}")
        if within(u, sd) or within(sd, u):
            err(uloc, f"{dotted(uloc)}: {u} overlaps lamina's state_dir {sd}")


ARCHIVE_SOURCES = ("docker-archive:", "oci-archive:", "oci-layout:", "lamina:")
OWNER_RE = re.compile(r"[0-9]{1,10}:[0-9]{1,10}")
MAX_ID = 2**32 - 2  # uid_t is 32 bits; -1 means "unchanged" to chown(2)
OVL_MAX_STACK = 500  # overlayfs's lower stack limit (images.MAX_LAYERS)


def container_target(spec: Spec, name: str) -> str:
    target = spec.containers[name].target
    return target or posixpath.join(spec.state_dir, "containers", name, "merged")


def _check_image(spec: Spec, name: str, image, err) -> None:
    from .spec import NAME_RE, check_path

    base: Loc = ("images", name)
    source = image.from_
    if source.startswith(ARCHIVE_SOURCES):
        if not source.split(":", 1)[1]:
            err(base + ("from",), f"images.{name}.from: {source!r} needs a path after the colon")
        elif source.startswith("lamina:") and not NAME_RE.match(source[len("lamina:"):]):
            # the name becomes a file name in the controller's image store
            err(base + ("from",), f"images.{name}.from: {source!r}: lamina:NAME takes the name of a"
                " committed image ([a-zA-Z0-9_.-])")
    elif source != "scratch":
        chain, parent = [name], source
        while parent in spec.images and parent not in chain:
            chain.append(parent)
            parent = spec.images[parent].from_
        if source not in spec.images:
            err(base + ("from",), f"images.{name}.from: no image {source!r} in the spec"
                " (use scratch, an image name, docker-archive:, oci-archive:, oci-layout: or lamina:)")
        elif parent == name:
            err(base + ("from",), f"images.{name}.from: inheritance cycle {' -> '.join(chain + [name])}")
    for i, step in enumerate(image.steps):
        loc = base + ("steps", i)
        where = dotted(loc)
        kinds = [k for k, v in (("copy", step.copy_), ("add", step.add), ("run", step.run)) if v is not None]
        if len(kinds) != 1:
            err(loc, f"{where}: a step needs exactly one of copy, add, run (found {', '.join(kinds) or 'none'})")
        if (step.env or step.workdir) and step.run is None:
            err(loc, f"{where}: env and workdir apply to run steps only")
        for key, value in (("workdir", step.workdir), ("copy", step.copy_ and step.copy_.dest),
                           ("add", step.add and step.add.dest)):
            if value is None:
                continue
            field = loc + ((key, "dest") if key != "workdir" else (key,))
            try:
                check_path(value)
            except ValueError as e:
                err(field, f"{dotted(field)}: {e}")
        owner = step.copy_.owner if step.copy_ else None
        if owner and (not OWNER_RE.fullmatch(owner) or max(map(int, owner.split(":"))) > MAX_ID):
            err(loc + ("copy", "owner"), f"{where}.copy.owner: use numeric UID:GID, e.g. 0:0 (each at most {MAX_ID})")
        if step.run is not None and not step.run.strip():
            err(loc + ("run",), f"{where}.run: empty command")


def _check_overlay(ov: Overlay, base: Loc, err) -> None:
    where = dotted(base)
    if ov.upper is None:
        if ov.work is not None:
            err(base + ("work",), f"{where}.work: a work dir needs an upper dir")
        if len(ov.lower) < 2:
            err(base + ("lower",), f"{where}.lower: a read-only overlay (no upper) needs at least two lowers")
    elif ov.work is None:
        err(base, f"{where}: missing required key 'work' (needed with upper)")
    if len(ov.lower) > OVL_MAX_STACK:
        err(base + ("lower",), f"{where}.lower: {len(ov.lower)} lowers; overlayfs stacks at most {OVL_MAX_STACK}")
    if len(set(ov.lower)) != len(ov.lower):
        err(base + ("lower",), f"{where}.lower: the same directory is listed twice")
    writable = [(k, d) for k, d in (("upper", ov.upper), ("work", ov.work)) if d]
    for key, d in writable:
        for i, low in enumerate(ov.lower):
            if within(d, low) or within(low, d):
                err(base + (key,), f"{where}.{key}: {d} overlaps lower[{i}] {low}")
    if ov.upper and ov.work and (within(ov.upper, ov.work) or within(ov.work, ov.upper)):
        err(base + ("work",), f"{where}.work: {ov.work} and upper {ov.upper} must be separate directories")
    for key, d in [("lower", low) for low in ov.lower] + writable:
        if within(ov.target, d) or within(d, ov.target):
            err(base + ("target",), f"{where}.target: {ov.target} overlaps {key} {d}")
            break
    data = len("lowerdir=" + ":".join(ov.lower) + f",upperdir={ov.upper},workdir={ov.work}")
    if data > MAX_MOUNT_DATA:
        err(base + ("lower",), f"{where}.lower: overlay options are {data} bytes; the kernel"
            f" silently truncates mount data past one page (limit here {MAX_MOUNT_DATA})")


def _check_mount(spec: Spec, m, loc: Loc, err) -> None:
    from .spec import NAME_RE, check_path

    where = dotted(loc)
    if m.type == "tmpfs":
        if m.source is not None:
            err(loc, f"{where}: a tmpfs mount takes no source")
        return
    if m.source is None:
        err(loc, f"{where}: missing required key 'source'")
    elif m.type == "volume":
        if not NAME_RE.match(m.source):
            err(loc, f"{where}: invalid volume name {m.source!r}: use 2+ characters [a-zA-Z0-9_.-],"
                " starting with a letter or digit")
        elif spec.volumes.get(m.source) and spec.volumes[m.source].state == "absent":
            err(loc, f"{where}: volume {m.source!r} is declared absent but mounted here")
    else:
        try:
            check_path(m.source)
        except ValueError as e:
            err(loc, f"{where}: source: {e}")


def report(e: SpecInvalid, stream=None) -> None:
    for error in e.errors:
        print(one_line(error), file=stream or sys.stderr)  # sys.stderr now, not at import
