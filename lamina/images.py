"""Images → their layers, lowest first (controller side).

copy / add steps and imported archives become layers here, built once into the
tarball cache and named by their DiffID. A run step can only be built on a host; it is
named by a key over everything below it plus the step itself (Docker's build cache
rule), and the host records which layer that key produced.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import SpecInvalid

if TYPE_CHECKING:  # planning needs the loader; reading a cached plan does not (planstore.py)
    from .loader import LoadedSpec, Loc

MAX_LAYERS = 500  # overlayfs's lower stack limit (OVL_MAX_STACK)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Layer:
    """A layer built on the controller (lamina/tarball.py), ready to ship."""

    diff_id: str  # "sha256:<hex>" of the uncompressed layer tar in OCI/Docker form (Docker's DiffID)
    path: Path  # the same layer as a tar in overlay form, in the cache dir, ready to ship
    sha256: str  # hex sha256 of the file at `path` (the host checks it while extracting)
    size: int  # bytes of the file at `path`


@dataclass(frozen=True)
class RunStep:
    command: str
    env: tuple[tuple[str, str], ...] = ()
    workdir: str | None = None


@dataclass(frozen=True, eq=False)
class LayerRef:
    key: str  # hex; identifies the layer and everything below it
    source: str  # where the spec made it: "images.app.steps[1]"
    digest: str | None = None  # hex DiffID of a layer built here; None for run steps
    layer: Layer | None = None
    run: RunStep | None = None
    below: tuple[str, ...] = field(default=())  # keys of the layers under this one, lowest first

    @property
    def label(self) -> str:
        if self.digest:
            return f"layer {self.digest[:12]}"
        return f"run {self.source}"


@dataclass(frozen=True, eq=False)
class ImagePlan:
    name: str
    layers: tuple[LayerRef, ...]  # lowest first


def _chain(below_key: str, what: str) -> str:
    return hashlib.sha256(f"sha256:{below_key} {what}".encode()).hexdigest() if below_key else \
        what.removeprefix("sha256:")


def image_store() -> Path:
    """Where committed images live on the controller, as OCI archives (`from: lamina:NAME`)."""
    root = Path(os.environ.get("LAMINA_IMAGES") or Path.home() / ".local/share/lamina/images")
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return root



def files_dir(loaded: LoadedSpec, loc: Loc) -> Path:
    doc = loaded.docs.get(loc[:2])
    return Path(doc.file).resolve().parent if doc else Path.cwd()


def local_path(loaded: LoadedSpec, loc: Loc, src: str) -> Path:
    """A controller-side path: absolute, or relative to the spec's files/ dir or the spec's
    dir — and then it must stay inside that dir, symlinks resolved (Docker's build context)."""
    if Path(src).is_absolute():
        return Path(src)
    from . import planstore

    base = files_dir(loaded, loc)
    planstore.note(base / "files" / src)  # where it is found may change
    root = base / "files" if (base / "files" / src).exists() else base
    path = root / src
    if not path.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{src} leads out of {root} (through '..' or a symlink)")
    return path


def resolve(loaded: LoadedSpec) -> dict[str, ImagePlan]:
    """Every image of the spec with its layers; builds copy/add/import layers into the cache."""
    from . import tarball
    from .loader import ARCHIVE_SOURCES, dotted

    spec, done, errors = loaded.spec, {}, []

    def error(loc: Loc, message: str) -> None:
        errors.append(loaded.error(loc, f"{dotted(loc)}: {message}"))

    def image(name: str) -> ImagePlan | None:
        if name in done:
            return done[name]
        img, base = spec.images[name], ("images", name)
        layers: list[LayerRef] = []
        source = img.from_
        try:
            if source in spec.images:
                parent = image(source)
                if parent is None:
                    return None
                layers = list(parent.layers)
            elif source.startswith(ARCHIVE_SOURCES):
                kind, path = source.split(":", 1)
                local = local_path(loaded, base, path)
                if kind == "lamina":  # an image made by `lamina commit`
                    local = image_store() / f"{path}.tar"
                    if not local.is_file():
                        raise ValueError(f"no committed image {path!r} in {image_store()}")
                load = {"docker-archive": tarball.from_docker_archive, "oci-archive": tarball.from_oci_archive,
                        "oci-layout": tarball.from_oci_layout, "lamina": tarball.from_oci_archive}[kind]
                for built in load(local):
                    layers.append(_built(layers, built, f"{dotted(base)}.from"))
        except (ValueError, OSError) as e:
            error(base + ("from",), str(e))
            return None
        for i, step in enumerate(img.steps):
            loc = base + ("steps", i)
            try:
                if step.copy_:
                    c = step.copy_
                    owner = tuple(int(x) for x in c.owner.split(":")) if c.owner else None
                    built = tarball.from_directory(local_path(loaded, loc, c.src), c.dest, c.mode, owner)
                    layers.append(_built(layers, built, dotted(loc)))
                elif step.add:
                    built = tarball.from_archive(local_path(loaded, loc, step.add.src), step.add.dest)
                    layers.append(_built(layers, built, dotted(loc)))
                elif step.run is not None:
                    run = RunStep(step.run, tuple(sorted(step.env.items())), step.workdir)
                    below = layers[-1].key if layers else ""
                    what = json.dumps([run.command, run.env, run.workdir])
                    key = hashlib.sha256(f"{below} run {what}".encode()).hexdigest()
                    layers.append(LayerRef(key, dotted(loc), run=run, below=tuple(x.key for x in layers)))
            except (ValueError, OSError) as e:
                error(loc + (("copy",) if step.copy_ else ("add",) if step.add else ()), str(e))
                return None
        if len(layers) > MAX_LAYERS:
            error(base, f"{len(layers)} layers; overlayfs stacks at most {MAX_LAYERS}")
            return None
        done[name] = ImagePlan(name, tuple(layers))
        return done[name]

    for name in spec.images:
        image(name)
    for name, c in spec.containers.items():
        if c.image in done and not done[c.image].layers:
            error(("containers", name, "image"), f"image {c.image!r} has no layers to mount")
    if errors:
        raise SpecInvalid(errors)
    return done


def _built(below: list[LayerRef], built: Layer, source: str) -> LayerRef:
    key = _chain(below[-1].key if below else "", built.diff_id)
    return LayerRef(key, source, digest=built.diff_id.removeprefix("sha256:"), layer=built,
                    below=tuple(x.key for x in below))


def chain_id(image: ImagePlan, digests: dict[str, str]) -> str | None:
    """The image's OCI ChainID, given every layer's digest (None while one is unknown)."""
    from . import tarball

    ids = [digests.get(ref.key) or ref.digest for ref in image.layers]
    if not ids or None in ids:
        return None
    return tarball.chain_ids([f"sha256:{d}" for d in ids])[-1]
