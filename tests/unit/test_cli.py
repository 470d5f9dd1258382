"""The command line's early reading: plan and apply connect to their hosts before argparse is
imported, from a plain reading of argv that must agree with argparse or step aside."""

from __future__ import annotations

import pytest

from lamina import cli


@pytest.mark.parametrize("command", ["plan", "apply"])
def test_the_early_reading_knows_exactly_the_parsers_options(command):
    sub = next(a for a in cli.parser(command)._actions if a.choices)
    actions = [a for a in sub.choices[command]._actions if a.option_strings and a.dest != "help"]
    valued = {o for a in actions if a.nargs != 0 for o in a.option_strings}
    flags = {o for a in actions if a.nargs == 0 for o in a.option_strings}
    assert valued == set(cli.VALUED)
    assert flags <= cli.FLAGS  # --detailed-exitcode is plan's alone: apply's parser refuses it
    assert {cli.VALUED[o] for o in valued} - {None} == {"inventory", "limit"}


@pytest.mark.parametrize("argv", [
    ["apply", "-i", "inv.py", "a.yml"],
    ["plan", "a.yml", "--inventory", "inv.py", "--limit", "h1", "--host", "h2", "--sudo", "--json"],
    ["apply", "-i", "x.py", "-i", "inv.py", "--lock-timeout", "5", "--check-layers", "--prune"],
    ["plan", "-i", "h1,h2", "--detailed-exitcode"],
])
def test_the_early_reading_agrees_with_argparse(argv):
    args = cli.parser(argv[0]).parse_args(argv)
    assert cli._hosts_named(argv) == (args.inventory, args.limit, args.sudo)


@pytest.mark.parametrize("argv", [
    [], ["validate", "a.yml"], ["verify", "-i", "inv.py"], ["apply", "a.yml"],
    ["apply", "--inventory=inv.py"], ["apply", "--inv", "inv.py"], ["apply", "-iinv.py"],
    ["apply", "-i", "inv.py", "-h"], ["apply", "-i", "inv.py", "--", "-odd.yml"], ["apply", "-i"],
    ["apply", "-i", "--sudo"], ["apply", "-i", "inv.py", "--limit"],
])
def test_the_early_reading_steps_aside_where_argparse_must_decide(argv):
    assert cli._hosts_named(argv) is None


class Recorded:
    """Stands for sshrun.Connections: the wiring under test is main's, not the connections'."""

    def __init__(self):
        self.closed = 0

    def close(self):
        self.closed += 1


def test_a_usage_error_closes_the_early_connections(monkeypatch, capsys):
    opened = []
    monkeypatch.setattr(cli, "_connect", lambda *named: opened.append(Recorded()) or opened[-1])
    with pytest.raises(SystemExit) as e:
        cli.main(["apply", "-i", "inv.py", "--lock-timeout", "soon"])
    assert e.value.code == 2 and "invalid float value" in capsys.readouterr().err
    assert [c.closed for c in opened] == [1]


def test_plan_runs_on_the_early_connections(monkeypatch):
    opened, used = [], []
    monkeypatch.setattr(cli, "_connect", lambda *named: opened.append(Recorded()) or opened[-1])
    monkeypatch.setattr(cli, "_run", lambda args, apply: used.append(args.connections) or 0)
    assert cli.main(["plan", "-i", "inv.py", "a.yml"]) == 0
    assert used == opened and len(opened) == 1
