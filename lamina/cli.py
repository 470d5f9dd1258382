"""The `lamina` command. Exit codes: 0 ok, 1 a host failed, 2 bad input."""

from __future__ import annotations

import os
import sys

from . import DEFAULT_STATE_DIR
from .errors import LaminaError, SpecInvalid, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from .sshrun import Connections

EPILOG = """\
examples:
  lamina lab up                                  start 3 test hosts on this machine
  lamina validate roles/demo/spec.yml            check a spec without touching any host
  lamina plan  -i inventories/lab.py roles/demo/spec.yml
  lamina apply -i inventories/lab.py roles/demo/spec.yml
  lamina verify -i inventories/lab.py roles/demo/spec.yml

exit codes: 0 ok, 1 a host failed or verification failed, 2 bad input (nothing touched)
"""


def _print_json(value) -> None:
    import json  # not at the top: with re and enum, ~15 ms before a run's first connection

    print(json.dumps(value, indent=2))


def _targets(p: argparse.ArgumentParser, converge: bool = False) -> None:
    """The options of every command that works on an inventory's hosts."""
    p.add_argument("-i", "--inventory", required=True, help="pyinfra inventory (file or host list)")
    p.add_argument("specs", nargs="*", metavar="SPEC",
                   help="spec files (default: roles/<role>/spec.yml for each role in the host's"
                        " lamina_roles inventory data)")
    p.add_argument("--limit", "--host", action="append", dest="limit", default=[], metavar="HOST",
                   help="only these hosts (repeatable)")
    p.add_argument("--sudo", action="store_true", help="run remote commands through sudo")
    if converge:
        p.add_argument("--check-layers", action="store_true",
                       help="also re-read every stored layer and replace those whose content changed (slow)")
        p.add_argument("--lock-timeout", type=float, default=60.0, metavar="SECONDS",
                       help="how long to wait for another run's lock on a host (default 60)")


def parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; with `only` ("plan" or "apply"), just that command: a re-run then
    skips building the twenty other parsers (~10 ms of every run), with the same usage,
    help and errors for that command."""
    import argparse  # not at the top: plan and apply connect to their hosts first (main)

    p = argparse.ArgumentParser(
        prog="lamina", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Docker's storage model — layers, overlays, volumes, binds — as idempotent"
                    " infrastructure on plain Linux hosts, over SSH.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, add in (("validate", _add_checks), ("plan", _add_plan), ("apply", _add_apply), ("verify", _add_rest)):
        if only in (None, name):
            add(sub)
    return p


def _add_checks(sub) -> None:
    v = sub.add_parser("validate", help="check spec files; prints FILE:LINE:COL: message per error")
    v.add_argument("specs", nargs="+", metavar="SPEC")
    v.add_argument("-i", "--inventory", help="render templates with each host's data")
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("schema", help="print the JSON Schema of spec files (for editors)")
    s.set_defaults(func=cmd_schema)


def _add_plan(sub) -> None:
    pl = sub.add_parser("plan", help="show, per host, what apply would change and why")
    _targets(pl, converge=True)
    pl.add_argument("--json", action="store_true", help="machine-readable output")
    pl.add_argument("--prune", action="store_true", help="show what --prune would unmount")
    pl.add_argument("--detailed-exitcode", action="store_true",
                    help="exit 3 when there are changes (like terraform)")
    pl.set_defaults(func=cmd_plan)


def _add_apply(sub) -> None:
    ap = sub.add_parser("apply", help="converge hosts to the specs")
    _targets(ap, converge=True)
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument("--prune", action="store_true", help="unmount what lamina mounted before but no spec names now")
    ap.set_defaults(func=cmd_apply)


def _add_rest(sub) -> None:
    from . import lab

    ve = sub.add_parser("verify", help="check hosts against the specs with pytest-testinfra over SSH")
    _targets(ve)
    ve.add_argument("--junitxml", metavar="FILE", help="write a JUnit XML report")
    ve.add_argument("-q", "--quiet", action="store_true", help="less pytest output")
    ve.set_defaults(func=cmd_verify)

    ins = sub.add_parser("inspect", help="show a container's layers and mounts as JSON, like docker inspect")
    ins.add_argument("container", metavar="CONTAINER")
    _targets(ins)
    ins.set_defaults(func=cmd_inspect)

    d = sub.add_parser("diff", help="a container's changes against its image, like docker diff (A/C/D)")
    d.add_argument("container", metavar="CONTAINER")
    _targets(d)
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=cmd_diff)

    co = sub.add_parser("commit", help="make a container's writable layer into an image (docker commit)")
    co.add_argument("container", metavar="CONTAINER")
    co.add_argument("image", metavar="IMAGE", help="name of the new image; use it as `from: lamina:IMAGE`")
    _targets(co)
    co.set_defaults(func=cmd_commit)

    ex = sub.add_parser("export", help="write an image as a docker-save or OCI archive (docker load takes both)")
    ex.add_argument("image", metavar="IMAGE")
    ex.add_argument("-o", "--output", required=True, metavar="FILE", help="archive to write")
    ex.add_argument("--format", choices=("docker", "oci"), default="docker", help="archive format (default docker)")
    _targets(ex)
    ex.set_defaults(func=cmd_export)

    cpp = sub.add_parser("cp", help="copy files between here and a container or volume (docker cp)",
                         description="One side is HOST:CONTAINER:PATH or HOST:VOLUME:PATH, the other a local path."
                         " Into an existing directory SRC goes under its own name (SRC/. copies its contents);"
                         " otherwise it becomes DEST. Modes and owners are kept.")
    cpp.add_argument("src", metavar="SRC")
    cpp.add_argument("dest", metavar="DEST")
    cpp.add_argument("-i", "--inventory", required=True, help="pyinfra inventory (file or host list)")
    cpp.add_argument("-s", "--spec", action="append", dest="specs", default=[], metavar="SPEC",
                     help="spec files that define the container (default: the host's lamina_roles)")
    cpp.add_argument("--sudo", action="store_true", help="run remote commands through sudo")
    cpp.set_defaults(func=cmd_cp)

    rs = sub.add_parser("reset", help="drop a container's writable layer and start it fresh (volumes kept)")
    rs.add_argument("container", metavar="CONTAINER")
    _targets(rs)
    rs.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    rs.set_defaults(func=cmd_reset)

    vo = sub.add_parser("volume", help="named volumes on hosts: ls, inspect, rm (like docker volume)")
    vsub = vo.add_subparsers(dest="volume_command", required=True, metavar="COMMAND")
    for verb, text in (("ls", "list volumes, their labels and who uses them"),
                       ("inspect", "one volume as JSON"), ("rm", "delete a volume and its data (refused if in use)")):
        v = vsub.add_parser(verb, help=text)
        if verb != "ls":
            v.add_argument("name", metavar="VOLUME")
        v.add_argument("-i", "--inventory", required=True, help="pyinfra inventory (file or host list)")
        v.add_argument("--host", "--limit", action="append", dest="limit", default=[], metavar="HOST")
        v.add_argument("--sudo", action="store_true", help="run remote commands through sudo")
        v.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help=f"default {DEFAULT_STATE_DIR}")
        if verb == "rm":
            v.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        if verb == "ls":
            v.add_argument("--json", action="store_true", help="machine-readable output")
        v.set_defaults(func=cmd_volume)

    gc = sub.add_parser("gc", help="list (and with --yes remove) layers that no image of the specs uses")
    _targets(gc)
    gc.add_argument("--yes", action="store_true", help="remove them (default: only list)")
    gc.add_argument("--json", action="store_true", help="machine-readable output")
    gc.set_defaults(func=cmd_gc)

    lab.register(sub)


def cmd_validate(args) -> int:
    """Everything short of a host: parse, check, and build the images' layers (controller side)."""
    from . import images, loader
    from .runner import host_variables, load_inventory

    def check(variables) -> None:
        loaded = loader.load(args.specs, variables)
        if loaded.spec.images:
            images.resolve(loaded)

    if args.inventory:
        for h in load_inventory(args.inventory):
            check(host_variables(h.name, h.data.dict()))
    else:  # templates see an anonymous host; -i gives them real inventory data
        try:
            check(host_variables("localhost", {}))
        except SpecInvalid as e:
            if any("is undefined" in err.message for err in e.errors):
                print("lamina: hint: pass -i INVENTORY to render templates with host data",
                      file=sys.stderr)
            raise
    print(f"ok: {len(args.specs)} spec file(s) valid", file=sys.stderr)
    return 0


def cmd_schema(args) -> int:
    from .spec import json_schema

    _print_json(json_schema())
    return 0


def _run(args, apply: bool) -> int:
    early = args.connections if "connections" in args else _connect(args.inventory, args.limit, args.sudo)
    flags = {"gc": False, "prune": getattr(args, "prune", False), "check_layers": args.check_layers}
    global _only_read
    report = read = None
    _only_read = False
    try:
        if early is not None:  # hosts as the last run left them need no planner at all
            from . import fastpath

            report, read = fastpath.read(early, args.specs, flags)
            _only_read = report is not None
        if report is None:
            from .runner import run

            report = run(args.inventory, args.specs, apply=apply, sudo=args.sudo, limit=args.limit, early=early,
                         read=read, lock_timeout=args.lock_timeout, **flags)
    finally:
        if early is not None:
            early.close(wait=not _only_read)  # the fact scripts only read: nothing to see to its end
    if args.json:
        _print_json(report.as_json())
    else:
        print("\n".join(report.lines(applied=apply)))
    if report.failed:
        return 1
    if not apply and args.detailed_exitcode and any(h.changed for h in report.hosts.values()):
        return 3
    return 0


def cmd_plan(args) -> int:
    return _run(args, apply=False)


def cmd_apply(args) -> int:
    return _run(args, apply=True)


def cmd_inspect(args) -> int:
    from .runner import inspect

    _print_json(inspect(args.inventory, args.specs, args.container, sudo=args.sudo, limit=args.limit))
    return 0


def cmd_diff(args) -> int:
    from .lifecycle import diff

    result = diff(args.inventory, args.specs, args.container, sudo=args.sudo, limit=args.limit)
    if args.json:
        _print_json({h: [{"Kind": k, "Path": p} for k, p in c] for h, c in result.items()})
    else:
        for host, changes in result.items():
            prefix = f"{host}: " if len(result) > 1 else ""
            print("\n".join(f"{prefix}{kind} {path}" for kind, path in changes))
    return 0


def cmd_commit(args) -> int:
    from .lifecycle import commit

    done = commit(args.inventory, args.specs, args.container, args.image, sudo=args.sudo, limit=args.limit)
    _print_json({"Host": done.host, "Image": done.image, "Id": done.image_id, "Layer": done.layer.diff_id,
                 "Archive": str(done.archive), "From": f"lamina:{done.image}"})
    return 0


def cmd_cp(args) -> int:
    from .lifecycle import cp

    print(cp(args.inventory, args.specs, args.src, args.dest, sudo=args.sudo))
    return 0


def cmd_export(args) -> int:
    from pathlib import Path

    from .lifecycle import export

    image_id = export(args.inventory, args.specs, args.image, Path(args.output), fmt=args.format, sudo=args.sudo,
                      limit=args.limit)
    print(f"{args.output}: {args.image} ({image_id})")
    return 0


def confirm(question: str, yes: bool) -> None:
    """Destructive commands ask first; without a terminal they need --yes."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{question} Not without --yes (no terminal to ask on).")
    if input(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise LaminaError("cancelled")


def cmd_reset(args) -> int:
    from .lifecycle import reset

    where = f" on {', '.join(args.limit)}" if args.limit else " on every host that has it"
    confirm(f"Delete the writable layer of container {args.container}{where}?", args.yes)
    for host in reset(args.inventory, args.specs, args.container, sudo=args.sudo, limit=args.limit):
        print(f"{host}: container {args.container} reset")
    return 0


def cmd_volume(args) -> int:
    from . import volumes

    kw = {"state_dir": args.state_dir, "sudo": args.sudo, "limit": args.limit}
    if args.volume_command == "ls":
        found = volumes.ls(args.inventory, **kw)
        if args.json:
            _print_json(found)
        else:
            print(f"{'HOST':<12} {'VOLUME':<24} {'USED BY':<40} LABELS")
            for v in found:
                labels = ",".join(f"{k}={x}" for k, x in v["Labels"].items())
                print(f"{v['Host']:<12} {v['Name']:<24} {','.join(v['UsedBy']) or '-':<40} {labels or '-'}")
    elif args.volume_command == "inspect":
        _print_json(volumes.inspect(args.inventory, args.name, **kw))
    else:
        confirm(f"Delete volume {args.name} and all its data?", args.yes)
        for host in volumes.rm(args.inventory, args.name, **kw):
            print(f"{host}: volume {args.name} removed")
    return 0


def cmd_gc(args) -> int:
    from .runner import run

    report = run(args.inventory, args.specs, apply=args.yes, sudo=args.sudo, limit=args.limit, gc=True)
    if args.json:
        _print_json(report.as_json())
    else:
        print("\n".join(report.lines(applied=args.yes)))
        if not args.yes and any(h.changed for h in report.hosts.values()):
            print("(nothing removed: run again with --yes to remove)", file=sys.stderr)
    return 1 if report.failed else 0


def cmd_verify(args) -> int:
    from .verify import verify

    return verify(args.inventory, args.specs, sudo=args.sudo, limit=args.limit,
                  junitxml=args.junitxml, quiet=args.quiet)


# plan's and apply's options as _hosts_named reads them (a unit test holds them to the parser's):
# those taking a value, with the field it sets (None: not one that picks the hosts), and flags
VALUED = {"-i": "inventory", "--inventory": "inventory", "--limit": "limit", "--host": "limit", "--lock-timeout": None}
FLAGS = {"--sudo", "--check-layers", "--json", "--prune", "--detailed-exitcode"}


def _hosts_named(argv: Sequence[str]) -> tuple[str, list[str], bool] | None:
    """(inventory, limit, sudo) of a `plan` or `apply` command line, read without argparse;
    None for any shape this plain reading could get wrong (`--opt=value`, abbreviations,
    `--`, `-h`): argparse decides those, and the hosts are connected after it."""
    if not argv or argv[0] not in ("plan", "apply"):
        return None
    named: dict[str, object] = {"inventory": None, "limit": [], "sudo": False}
    args = iter(argv[1:])
    for arg in args:
        if arg in VALUED:
            value = next(args, None)
            if value is None or value.startswith("-"):
                return None
            if VALUED[arg] == "limit":
                named["limit"].append(value)
            elif VALUED[arg]:
                named[VALUED[arg]] = value
        elif arg in FLAGS:
            named["sudo"] = named["sudo"] or arg == "--sudo"
        elif arg.startswith("-"):
            return None
    return (named["inventory"], named["limit"], named["sudo"]) if named["inventory"] else None


def _connect(inventory: str, limit: list[str], sudo: bool) -> Connections | None:
    from . import sshrun

    return sshrun.Connections.for_inventory(inventory, limit, sudo)


_only_read = False  # this process's run was the in-sync re-run: it read the hosts, and that was all


def entry() -> None:
    """The `lamina` command. After an in-sync re-run the process ends at once: it has nothing
    left to finalize (no temporary file, thread or pending write), and freeing the
    interpreter's objects one by one would take ~10 ms of a ~250 ms run."""
    try:
        code = main(stop_on_sigterm=True)
    except Terminated:  # raised wherever main was; its `finally` blocks have run
        print("lamina: terminated", file=sys.stderr)
        code = 143  # 128 + SIGTERM
    if _only_read:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:  # the reader left (main said so already)
                pass
        os._exit(code)
    sys.exit(code)


class Terminated(BaseException):
    """SIGTERM arrived (`kill`, a cancelled CI job): unwound like Ctrl-C."""


def _terminated(signum, frame) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None, stop_on_sigterm: bool = False) -> int:
    """`stop_on_sigterm` (the `lamina` command): SIGTERM ends the run through the `finally`
    blocks that close its connections and tell each host's ssh master to exit, as Ctrl-C
    does; by Python's default the masters would be left running, connected, on their own."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # plan and apply connect to their hosts first, and import, parse and plan while the SSH
    # handshakes run: before argparse is imported, when the hosts can be told without it
    named = _hosts_named(argv)
    early = _connect(*named) if named else None
    if stop_on_sigterm:
        import signal  # (loaded by now when connections were made: after them, it costs nothing)

        signal.signal(signal.SIGTERM, _terminated)
    try:
        args = parser(argv[0] if argv and argv[0] in ("plan", "apply") else None).parse_args(argv)
    except BaseException:  # a usage error or --help: nothing was run on the connections
        if early is not None:
            early.close()
        raise
    if named:
        if named == (args.inventory, args.limit, args.sudo):
            args.connections = early
        elif early is not None:  # argparse read it otherwise: connect to the hosts it names
            early.close()
    try:
        code = args.func(args)
        sys.stdout.flush()  # a short output meets a closed pipe here, not at exit
        return code
    except SpecInvalid as e:
        from . import loader

        loader.report(e)
        return e.exit_code
    except LaminaError as e:
        print(f"lamina: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("lamina: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lamina plan | head`: the reader left; say nothing more, as cat would
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        except (OSError, ValueError):  # not a file (an embedding program's stream)
            pass
        return 141  # 128 + SIGPIPE, what a shell reports for a command a pipe cut short


if __name__ == "__main__":
    entry()
