"""Mounts that come back after a reboot without lamina running: the plan's mounts as a
boot script, started by a systemd unit (or from /etc/rc.local on hosts without systemd).

Both files are rendered from templates/ and kept like any other state: the facts read
their digests, a difference (a changed spec, or a hand-edited unit) rewrites them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
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
    if reasons and UNIT not in wanted and script_path(plan) in wanted:
        hook = f"[ -x {script_path(plan)} ] && {script_path(plan)}  # lamina"
        # the hook is looked for by the shell (rc.local is short; _p: its last line has no newline),
        # chmod only if it is needed
        lines.append(f"if [ ! -e {RC_LOCAL} ]; then printf '#!/bin/sh\\n' > {RC_LOCAL}; fi; _k={q(hook)} _l= _p=; "
                     f"while IFS= read -r _l || {{ [ -n \"$_l\" ] && _p='\\n'; }}; do "
                     f"case $_l in *\"$_k\"*) _k=; break ;; esac; _l=; done < {RC_LOCAL}; "
                     f"[ -z \"$_k\" ] || printf \"$_p%s\\n\" \"$_k\" >> {RC_LOCAL}; "
                     f"[ -x {RC_LOCAL} ] || chmod 755 {RC_LOCAL}")
    return reasons, lines
