"""Mounts that come back after a reboot without lamina running: the plan's mounts as a
boot script, started by a systemd unit (or from /etc/rc.local on hosts without systemd).

Both files are rendered from templates/ and kept like any other state: the facts read
their digests, a difference (a changed spec, or a hand-edited unit) rewrites them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from .plan import HostPlan

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
UNIT = "/etc/systemd/system/lamina-mounts.service"
WANTED_BY = "multi-user.target"
RC_LOCAL = "/etc/rc.local"


PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@cache
def _template(name: str) -> str:
    return (TEMPLATES / name).read_text()


def render(name: str, **values: str) -> str:
    """templates/NAME rendered with Jinja2. Templates that only substitute `{{ name }}` (both of
    lamina's) are filled in directly, with the same result: a no-op run then never imports
    Jinja2 (~50 ms); anything more goes through Jinja2 itself."""
    text = _template(name)
    if "{%" in text or "{#" in text or "{{" in PLACEHOLDER.sub("", text):
        import jinja2

        env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                                 keep_trailing_newline=True, autoescape=False)
        return env.get_template(name).render(**values)
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def script_path(plan: HostPlan) -> str:
    return f"{plan.state_dir}/boot.sh"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def files(plan: HostPlan, actual) -> dict[str, str]:
    """{path: content} of the boot files this host should have (empty: nothing to mount)."""
    from . import diff

    targets = plan.targets()
    if not targets:
        return {}
    # What apply would do on this host if none of the plan's mounts were there.
    inside = tuple(t.rstrip("/") + "/" for t in targets)
    bare = dataclasses.replace(actual, mounts=tuple(m for m in actual.mounts
                                                   if m.target not in targets and not m.target.startswith(inside)))
    result = diff.diff(dataclasses.replace(plan, boot=False), bare)
    commands = diff.apply_lines(result.changes)
    if not commands:
        return {}
    out = {script_path(plan): render("boot.sh.j2", commands="\n".join(commands))}
    if actual.init == "systemd":
        out[UNIT] = render("lamina-mounts.service.j2", state_dir=plan.state_dir, script=script_path(plan),
                           wanted_by=WANTED_BY)
    return out


def commands(plan: HostPlan, wanted: dict[str, str], actual) -> tuple[list[str], list[str]]:
    """(reasons, shell lines) that bring the boot files to `wanted`."""
    from .diff import q

    reasons, lines = [], []
    for path, content in wanted.items():
        have = actual.blobs.get(path)
        if have == digest(content):
            continue
        reasons.append(f"{path} {'differs' if have else 'is missing'}")
        mode = "700" if path.endswith(".sh") else "644"
        lines.append(f"printf '%s' {q(content)} > {q(path)}.lamina && chmod {mode} -- {q(path)}.lamina && "
                     f"mv -f -- {q(path)}.lamina {q(path)}")
    if reasons and UNIT in wanted:
        lines.append(f"systemctl daemon-reload && systemctl enable --quiet {UNIT.rsplit('/', 1)[1]}")
    if UNIT not in wanted and script_path(plan) in wanted:
        why, line = _rc_local(plan, actual)
        reasons += why
        lines += line
    return reasons, lines


# The last line that runs, when it is an `exit` (Debian's rc.local ends with `exit 0`).
_EXIT = re.compile(r"\s*exit(\s+[^\s;#]+)?\s*;?\s*(#.*)?")


def hook(plan: HostPlan) -> str:
    """The line of /etc/rc.local that starts the boot script."""
    return f"[ -x {script_path(plan)} ] && {script_path(plan)}  # lamina"


def rc_local(lines: Sequence[str] | None, line: str) -> list[str] | None:
    """rc.local's lines with `line` where it runs: before the final `exit` if the script ends
    with one (a hook after it would never run), else at the end; None when it runs already."""
    lines = lines or []
    ends = None  # index of the final exit, hook lines aside
    for i in range(len(lines) - 1, -1, -1):
        text = lines[i].strip()
        if text == line or not text or text.startswith("#"):
            continue
        ends = i if _EXIT.fullmatch(lines[i]) else None
        break
    hooks = [i for i, x in enumerate(lines) if x.strip() == line]  # not a commented-out one
    if hooks and (ends is None or hooks[0] < ends):
        return None
    body = [x for i, x in enumerate(lines) if i not in hooks]
    at = len(body) if ends is None else ends - sum(1 for i in hooks if i < ends)
    shebang = [] if any(x.strip() for x in body) else ["#!/bin/sh"]  # a file of its own: made runnable
    return [*shebang, *body[:at], line, *body[at:]]


def _rc_local(plan: HostPlan, actual) -> tuple[list[str], list[str]]:
    """(reasons, shell lines) that make /etc/rc.local start the boot script, and executable."""
    from .diff import q

    if actual.rc_local_mode == "?":
        return [], []  # not read as lines: never rewritten (diff._boot warns)
    want = rc_local(actual.rc_local, hook(plan))
    if want is None:
        return ([], []) if actual.rc_local_mode == "x" else ([f"{RC_LOCAL} is not executable"],
                                                            [f"chmod 755 -- {RC_LOCAL}"])
    why = (f"{RC_LOCAL} is missing" if actual.rc_local is None else
           f"{RC_LOCAL} exits before it starts the boot script"
           if any(x.strip() == hook(plan) for x in actual.rc_local) else
           f"{RC_LOCAL} does not start the boot script")
    # written beside the file it names (a symlink's target) and moved over it: never half-written
    return [why], [f"_r=$(readlink -f -- {RC_LOCAL}) || _r={RC_LOCAL}; "
                   f"printf '%s\\n' {' '.join(q(x) for x in want)} > \"$_r.lamina\" && "
                   f"chmod 755 -- \"$_r.lamina\" && mv -f -- \"$_r.lamina\" \"$_r\""]
