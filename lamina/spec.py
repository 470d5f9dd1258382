"""The spec language: one pydantic model per spec object, one field per key.

These models are the single source of truth for what a spec may say: the loader
validates against them, `lamina schema` prints their JSON Schema, and the planner
reads the validated objects. Checks that span several objects (two objects on one
target, upper inside a lower, ...) live in `loader.check_spec`, where the whole
spec is in view.
"""

from __future__ import annotations

import posixpath
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from . import DEFAULT_STATE_DIR, PROTECTED  # noqa: F401  (DEFAULT_STATE_DIR re-exported)

# Docker's volume name rule (moby volume/local); used for every object name. \Z, not $:
# "$" also matches before a final newline.
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+\Z")
# A name is a directory name on hosts (NAME_MAX 255), twice part of a container's overlay
# options, which must fit one page next to 500 short layer links.
MAX_NAME = 128
# The overlay mount option string separates options with "," and layers with ":",
# and treats "\" as an escape; rather than half-support them we refuse them.
OVERLAY_UNSAFE = re.compile(r"[,:\\\s]")


def _check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(
            f"invalid name {_show(value)}: use 2+ characters [a-zA-Z0-9_.-], starting with a letter or digit"
        )
    if len(value) > MAX_NAME:
        raise ValueError(f"invalid name {_show(value)}: longer than {MAX_NAME} characters")
    return value


def _show(value: str, width: int = 80) -> str:
    """A value quoted in an error message; a 10 MB one is cut."""
    return repr(value) if len(value) <= width else repr(value[:width]) + f"... ({len(value)} characters)"


def check_path(value: str) -> str:
    """An absolute, normalised path with no control characters."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"path {_show(value)} contains a control character")
    if not value.startswith("/"):
        raise ValueError(f"path {_show(value)} must be absolute")
    if ".." in value.split("/"):
        raise ValueError(f"path {_show(value)} must not contain '..'")
    norm = posixpath.normpath(value)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    return norm


def _check_target(value: str) -> str:
    value = check_path(value)
    if value == "/":
        raise ValueError("target must not be '/'")
    for p in PROTECTED:
        if value == p or value.startswith(p + "/"):
            raise ValueError(f"target {_show(value)} lies under {p}, which lamina never mounts over")
    return value


def _check_overlay_path(value: str) -> str:
    value = check_path(value)
    if OVERLAY_UNSAFE.search(value):
        raise ValueError(
            f"path {_show(value)} contains ',', ':', '\\' or white space, which overlay mount options"
            " cannot carry"
        )
    return value


# lamina makes its state dir root's, mode 700: never one that the system needs open.
SYSTEM_DIRS = frozenset({
    "/", "/bin", "/etc", "/home", "/lib", "/lib32", "/lib64", "/media", "/mnt", "/opt", "/root", "/run",
    "/sbin", "/srv", "/tmp", "/usr", "/usr/bin", "/usr/lib", "/usr/local", "/usr/sbin", "/usr/share",
    "/var", "/var/lib", "/var/log", "/var/tmp",
})


def _check_state_dir(value: str) -> str:
    value = _check_overlay_path(value)  # containers' upperdir= and workdir= lie in it
    if value in SYSTEM_DIRS:
        raise ValueError(f"{_show(value)} is a system directory; lamina makes its state dir"
                         " root-only (mode 700): use a directory of its own, e.g. /var/lib/lamina")
    for p in PROTECTED:
        if value == p or value.startswith(p + "/"):
            raise ValueError(f"{_show(value)} lies under {p}, which lamina never mounts over")
    return value


Name = Annotated[str, AfterValidator(_check_name)]
Path = Annotated[str, AfterValidator(check_path)]
Target = Annotated[str, AfterValidator(_check_target)]
LayerPath = Annotated[str, AfterValidator(_check_overlay_path)]
State = Literal["present", "absent"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


class VolumeOptions(_Model):
    nocopy: bool = Field(False, description="Do not copy the image's content into an empty volume.")


class BindOptions(_Model):
    create_host_path: bool = Field(
        False, description="Create a missing source directory (the short syntax implies it)."
    )


def _check_size(value: int | str) -> int | str:
    if isinstance(value, int) and not 0 <= value < 2**63 or isinstance(value, str) and not re.fullmatch(
            r"[0-9]{1,18}[kKmMgGtTpPeE%]?", value):
        raise ValueError(f"size {_show(str(value))}: use bytes, or a number with k, m, g or %")
    return value


def _check_mode(value: int) -> int:
    if not 0 <= value <= 0o7777:
        raise ValueError(f"mode {value} is not a permission mode (0 to 0o7777)")
    return value


Mode = Annotated[int, AfterValidator(_check_mode)]


class TmpfsOptions(_Model):
    size: Annotated[int | str, AfterValidator(_check_size)] | None = Field(
        None, description="Size limit, as tmpfs's size= option.")
    mode: Mode | None = Field(None, description="Mode of the tmpfs root, e.g. 0o1777 or 1023.")


def _short_mount(value: Any) -> Any:
    """Compose's short syntax: `name:/path[:ro]` or `/host/path:/path[:ro|rw]`."""
    if not isinstance(value, str):
        return value
    parts = value.split(":")
    mode = None
    if len(parts) == 3:
        mode = parts.pop()
    if len(parts) != 2 or mode not in (None, "ro", "rw"):
        raise ValueError(
            f"mount {_show(value)}: expected 'VOLUME:/path[:ro]' or '/host/path:/path[:ro]'"
        )
    source, target = parts
    out: dict[str, Any] = {"source": source, "target": target, "read_only": mode == "ro"}
    if source.startswith("/"):
        out.update(type="bind", bind={"create_host_path": True})
    else:
        out["type"] = "volume"
    return out


class Mount(_Model):
    """A mount inside an overlay's merged tree (Docker Compose's long syntax)."""

    type: Literal["volume", "bind", "tmpfs"] = Field(description="What to mount.")
    source: str | None = Field(
        None, description="Volume name (type volume) or absolute host path (type bind)."
    )
    target: Target = Field(description="Absolute path inside the overlay's merged tree.")
    read_only: bool = Field(False, description="Mount read-only.")
    volume: VolumeOptions = Field(default_factory=VolumeOptions)
    bind: BindOptions = Field(default_factory=BindOptions)
    tmpfs: TmpfsOptions = Field(default_factory=TmpfsOptions)


ShortOrLongMount = Annotated[Mount, BeforeValidator(_short_mount)]


def _check_fstype(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", value):
        raise ValueError(f"invalid filesystem type {_show(value)}")
    return value


def _check_option(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{_show(value)} contains a control character")
    return value


Text = Annotated[str, AfterValidator(_check_option)]  # one line, no control characters


def _check_env_name(value: str) -> str:
    if not value or "=" in value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"invalid variable name {_show(value)}: it must be non-empty, without '=' or"
                         " control characters")
    return value


def _check_env_value(value: str) -> str:
    # The run script passes NAME=VALUE lines to env(1): a newline would start another variable.
    if "\n" in value or "\0" in value:
        raise ValueError(f"value {_show(value)} contains a newline or NUL")
    return value


def _check_script(value: str) -> str:
    if "\0" in value:  # the shell would see the command cut there
        raise ValueError("command contains a NUL character")
    return value


class DriverOpts(_Model):
    """Docker's local driver options: the volume's _data is a mount of its own."""

    type: Annotated[str, AfterValidator(_check_fstype)] = Field(description="Filesystem type: tmpfs, nfs, ...")
    o: Text | None = Field(None, description="Mount options, as mount -o.")
    device: Text | None = Field(
        None, description="What to mount, e.g. server:/export (default: the type).")


class Volume(_Model):
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form metadata.")
    driver_opts: DriverOpts | None = Field(None, description="Mount the volume's data as this filesystem.")
    state: State = "present"
    purge: bool = Field(False, description="With state absent: delete the volume's data.")


class Overlay(_Model):
    lower: list[LayerPath] = Field(
        min_length=1, description="Lower directories, highest first (as in lowerdir=)."
    )
    upper: LayerPath | None = Field(
        None, description="Writable upper directory; none gives a read-only overlay."
    )
    work: LayerPath | None = Field(
        None, description="Work directory, on the same filesystem as upper."
    )
    target: Target = Field(description="Where the merged tree is mounted.")
    label: Text | None = Field(
        None, description="Mount source shown in mount tables (default: lamina-NAME)."
    )
    mounts: list[ShortOrLongMount] = Field(
        default_factory=list, description="Volumes, binds and tmpfs inside the merged tree."
    )
    state: State = "present"
    purge: bool = Field(False, description="With state absent: delete upper and work.")
    force: bool = Field(False, description="Detach lazily when the mount is busy.")


class Bind(_Model):
    source: Path = Field(description="Existing host path.")
    target: Target = Field(description="Where it is mounted.")
    read_only: bool = False
    create_source: bool = Field(
        False, description="Create a missing source directory (like docker -v) instead of failing."
    )
    state: State = "present"
    force: bool = Field(False, description="Detach lazily when the mount is busy.")


class CopyStep(_Model):
    src: str = Field(description="File or directory, relative to the spec's files/ (or the spec's) directory.")
    dest: str = Field(description="Where in the image; a trailing / copies a file into that directory.")
    mode: Mode | None = Field(None, description="Permission bits for copied files, e.g. 0o644 or 420.")
    owner: str | None = Field(None, description="Numeric UID:GID of copied entries (default 0:0).")


class AddStep(_Model):
    src: str = Field(description="A tar archive (plain, gzip, bzip2, xz or zstd), relative like copy's src.")
    dest: str = Field("/", description="Where it is extracted in the image.")


class Step(_Model):
    """One build step, making one layer: exactly one of copy, add, run."""

    copy_: CopyStep | None = Field(None, alias="copy", description="Docker COPY.")
    add: AddStep | None = Field(None, description="Docker ADD of a local archive: extracted at dest.")
    run: Annotated[str, AfterValidator(_check_script)] | None = Field(
        None, description="Shell command run in a chroot of the parent image.")
    env: dict[Annotated[str, AfterValidator(_check_env_name)], Annotated[str, AfterValidator(_check_env_value)]] = \
        Field(default_factory=dict, description="Environment of a run step.")
    workdir: str | None = Field(None, description="Working directory of a run step (created if missing).")


class Image(_Model):
    from_: str = Field(
        "scratch", alias="from",
        description="scratch, another image's name, docker-archive:PATH, oci-archive:PATH, oci-layout:DIR"
        " or lamina:NAME (made by lamina commit).",
    )
    steps: list[Step] = Field(default_factory=list, description="Each step adds one layer.")


class Container(_Model):
    image: Name = Field(description="An image of this spec.")
    target: Target | None = Field(None, description="Merged dir (default <state_dir>/containers/NAME/merged).")
    mounts: list[ShortOrLongMount] = Field(
        default_factory=list, description="Volumes, binds and tmpfs inside the container's tree."
    )
    state: State = "present"
    purge: bool = Field(False, description="With state absent: delete the writable layer.")
    force: bool = Field(False, description="Detach lazily when the mount is busy.")


class Spec(_Model):
    """A whole spec: one or more files merged."""

    state_dir: Annotated[str, AfterValidator(_check_state_dir)] = Field(
        DEFAULT_STATE_DIR, description="Where lamina keeps layers, volumes and containers.")
    volumes: dict[Name, Volume] = Field(default_factory=dict)
    overlays: dict[Name, Overlay] = Field(default_factory=dict)
    binds: dict[Name, Bind] = Field(default_factory=dict)
    images: dict[Name, Image] = Field(default_factory=dict)
    containers: dict[Name, Container] = Field(default_factory=dict)


SHORT_MOUNT_SCHEMA = {
    "type": "string",
    "pattern": r"^[^:]+:/[^:]*(:(ro|rw))?$",
    "description": "Compose short syntax: VOLUME:/path[:ro] or /host/path:/path[:ro]",
}


def json_schema() -> dict[str, Any]:
    """JSON Schema of a spec file, for editors (the short mount syntax added by hand)."""
    schema = Spec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "lamina spec"
    for owner in ("Overlay", "Container"):
        mounts = schema["$defs"][owner]["properties"]["mounts"]
        mounts["items"] = {"anyOf": [SHORT_MOUNT_SCHEMA, mounts["items"]]}
    return schema
