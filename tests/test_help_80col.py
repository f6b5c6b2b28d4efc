"""`--help` on an 80-column terminal: every option's full name is printed and no line is wider than 80.

(rich's option table cut long names to "--train-negativ…" at 80 columns; the CLI uses click's plain layout.)"""
from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from retr.cli.main import app


def _commands():
    root = typer.main.get_command(app)
    out = []

    def walk(cmd, path):
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click classes)
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])
        if path:
            out.append((path, cmd))

    walk(root, [])
    return out


@pytest.mark.parametrize("path, cmd", _commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_help_names_every_option_in_full_within_80_columns(path, cmd):
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    text = result.output
    too_wide = [line for line in text.splitlines() if len(line) > 80]
    assert not too_wide, too_wide[:3]
    assert "…" not in text
    for param in cmd.params:
        if param.param_type_name == "option" and not getattr(param, "hidden", False):
            for name in param.opts + param.secondary_opts:
                assert name in text, f"{' '.join(path)} --help does not show {name}"


def test_bare_retr_prints_the_help(capsys):
    """`retr` alone prints the help (exit 2, as before). In click's plain layout the help is the message of the
    NoArgsIsHelpError rather than printed while building it, so the entry point must print it."""
    from conftest import run_cli

    code, out, err = run_cli([], capsys)
    assert code == 2 and err == "", err
    assert "Usage: retr [OPTIONS] COMMAND" in out and "init-model" in out
