"""One option vocabulary: every command declares a shared option the same way (cli/options.py)."""

from __future__ import annotations

import collections
import math

import pytest
import typer
from typer.testing import CliRunner

from emocircuits.base.errors import EmocircuitsError
from emocircuits.cli.app import app
from emocircuits.cli.options import VOCABULARY, option


def _options() -> dict[str, list[tuple[str, object]]]:
    """``{primary flag: [(command path, click option), ...]}`` over every command."""
    seen: dict[str, list[tuple[str, object]]] = collections.defaultdict(list)

    def walk(cmd: object, path: list[str]) -> None:
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])
            return
        for p in cmd.params:
            if getattr(p, "param_type_name", "") == "option":
                seen[p.opts[0]].append((" ".join(path), p))

    walk(typer.main.get_command(app), [])
    return seen


OPTIONS = _options()


def test_every_option_used_by_two_commands_is_in_the_vocabulary():
    shared = sorted(flag for flag, uses in OPTIONS.items() if len(uses) > 1)
    assert [f for f in shared if f not in VOCABULARY and f"{f}/--no-{f[2:]}" not in VOCABULARY] == []


@pytest.mark.parametrize("flag", sorted(f for f in OPTIONS if f in VOCABULARY))
def test_a_shared_option_is_declared_once(flag):
    opt = VOCABULARY[flag]
    for command, p in OPTIONS[flag]:
        assert p.help == opt.help, f"{command} {flag}: its own help, not the vocabulary's"
        assert p.callback is not None or opt.check is None, f"{command} {flag}: its check is missing"
        if not opt.per_command and opt.default is not ...:
            assert p.default == opt.default, f"{command} {flag}: default {p.default!r}, vocabulary {opt.default!r}"


def test_a_command_cannot_move_a_default_that_is_not_its_own():
    with pytest.raises(ValueError, match="not the command's to set"):
        option("--seed", 3)


@pytest.mark.parametrize("args", [
    ["neurons", "find", "--seed", "-1", "--out", "x"],
    ["neurons", "find", "--top-rate", "nan", "--out", "x"],
    ["neurons", "find", "--top-rate", "1.5", "--out", "x"],
    ["steer", "hi", "--emotion", "anger", "--scale", "inf"],
    ["inference", "probe", "--limit-per-label", "0", "--out", "x"],
    ["circuits", "validate", "--from", "x", "--max-new-tokens", "0", "--out", "y"],
])
def test_numbers_are_checked_while_parsing(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    flag = next(a for a in args if a.startswith("--") and a not in ("--out", "--from", "--emotion"))
    assert isinstance(result.exception, EmocircuitsError), result.output
    assert str(result.exception).startswith(f"{flag} ") and "is not allowed" in str(result.exception)
    assert list(tmp_path.iterdir()) == []


def test_number_list_check():
    from emocircuits.cli.options import number_list

    check = number_list(0.0)("--scales")
    assert check("0,0.5,1") == "0,0.5,1"
    for bad in ("0,nan", "a,b", "-1", ""):
        with pytest.raises(EmocircuitsError, match="--scales"):
            check(bad)
    assert math.isfinite(float(check("2").split(",")[0]))
