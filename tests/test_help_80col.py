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


@pytest.mark.parametrize("group", [[], ["index"]], ids=["retr", "retr index"])
def test_group_help_lists_each_command_with_its_whole_help(group):
    """click's plain layout cut a command's help to one line ("Serve an index over HTTP (POST /search,...");
    rich's table wrapped it. The list wraps it again, within 80 columns."""
    cmd = typer.main.get_command(app)
    for name in group:
        cmd = cmd.commands[name]
    result = CliRunner().invoke(app, [*group, "--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert all(len(line) <= 80 for line in result.output.splitlines())
    listed = " ".join(result.output.split("Commands:", 1)[1].split())
    for name, sub in cmd.commands.items():
        assert f"{name} {' '.join(sub.help.split())}" in listed, name
