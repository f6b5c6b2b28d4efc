"""Command-line usage errors (an unparsable or out-of-range value, a missing or unknown option) as one line,
``retr index: --nlist: 'abc' is not a valid integer``, instead of Typer's boxed usage message.

Typer parses values with pydantic and wraps its ``ValidationError`` in ``BadParameter``; the first error of it
(type, input, constraint) is reworded here. Anything else keeps Typer's own message, made one line."""
from __future__ import annotations

from typing import Any

# pydantic error types -> how the value was wrong ({input} and the constraint's ctx keys are filled in)
_REWORDED = {
    "int_parsing": "{input!r} is not a valid integer",
    "int_from_float": "{input!r} is not a valid integer",
    "int_type": "{input!r} is not a valid integer",
    "float_parsing": "{input!r} is not a valid number",
    "float_type": "{input!r} is not a valid number",
    "finite_number": "{input!r} is not a finite number",
    "bool_parsing": "{input!r} is not a valid boolean",
    "greater_than_equal": "must be at least {ge}, got {input}",
    "greater_than": "must be more than {gt}, got {input}",
    "less_than_equal": "must be at most {le}, got {input}",
    "less_than": "must be less than {lt}, got {input}",
}


def _option_name(param: Any) -> str:
    """The option as a user types it (its longest spelling, ``--k`` rather than ``-k``), or an argument's name."""
    opts = list(getattr(param, "opts", None) or [])
    if opts and getattr(param, "param_type_name", "option") == "option":
        return max(opts, key=len)
    return str(getattr(param, "name", None) or (opts[0] if opts else "value")).upper()


def _sentence(text: str) -> str:
    """One line, no trailing full stop, lower-case start (it follows a colon)."""
    text = " ".join(str(text).split()).rstrip(".")
    return text[:1].lower() + text[1:] if text[1:2].islower() else text  # "No such ..." but not "BEIR ..."


def _value_problem(e: Any) -> str:
    """What was wrong with the value, from the pydantic error behind ``e`` when there is one."""
    errors = getattr(e.__cause__, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
        except Exception:  # not pydantic's shape after all: keep the message
            first = None
        if isinstance(first, dict):
            template = _REWORDED.get(first.get("type", ""))
            if template is not None:
                try:
                    return template.format(input=first.get("input"), **(first.get("ctx") or {}))
                except (KeyError, IndexError, ValueError):
                    pass
            msg = str(first.get("msg", ""))
            return _sentence(msg.removeprefix("Value error, "))
    text = _sentence(getattr(e, "message", None) or e.format_message())
    return "directory " + text[4:] if text.startswith("dir '") else text  # click's path checks say "dir 'x' ..."


def command_path(group: Any, args: list[str], prog: str = "retr") -> str:
    """``retr index info`` from the leading command names of ``args`` (for errors the parser raises before
    click knows which command it is in)."""
    path, cmd = [prog], group
    for arg in args:
        cmd = (getattr(cmd, "commands", None) or {}).get(arg)
        if cmd is None:
            break
        path.append(arg)
    return " ".join(path)


def usage_error_line(e: Any, fallback_command: str = "retr") -> str:
    """One line for a Typer/click usage error ``e``: the command, the option, what was wrong."""
    ctx = getattr(e, "ctx", None)
    command = getattr(ctx, "command_path", None) or fallback_command
    param = getattr(e, "param", None)
    kind = type(e).__name__
    if kind == "MissingParameter" and param is not None:
        what = "argument" if getattr(param, "param_type_name", "") == "argument" else "option"
        return f"{command}: missing {what} {_option_name(param)}"
    if kind in ("BadParameter", "MissingParameter"):
        if param is not None:
            return f"{command}: {_option_name(param)}: {_value_problem(e)}"
        hint = getattr(e, "param_hint", None)
        if hint:
            hint = hint if isinstance(hint, str) else " / ".join(hint)
            return f"{command}: {hint.strip(chr(39))}: {_value_problem(e)}"
        return f"{command}: {_value_problem(e)}"  # raised by a command itself, e.g. "--output is required"
    return f"{command}: {_sentence(e.format_message())}"
