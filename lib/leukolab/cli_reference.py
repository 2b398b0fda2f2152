"""The CLI reference page of the documentation, made from the ``leukolab`` parser itself: every command, its usage,
each argument with its help text, and the exit codes. ``docs/hooks.py`` puts it into ``docs/cli.md`` at build."""

from __future__ import annotations

import argparse

from leukolab.cli_parser import EXIT_CODES, build_parser


def cli_reference_markdown() -> str:
    """Markdown: the global options, a section per command (and per ``runs`` action), the exit codes."""
    parser = build_parser()
    parts = ["## Global options", "", _arguments(parser), ""]
    for name, sub in _subcommands(parser):
        parts += [f"## `leukolab {name}`", "", _escape(sub.description or ""), "",
                  "```text", sub.format_usage().replace("usage: ", "").strip(), "```", "", _arguments(sub), ""]
        for action_name, action in _subcommands(sub):
            parts += [f"### `leukolab {name} {action_name}`", "", _escape(action.description or ""), "",
                      "```text", action.format_usage().replace("usage: ", "").strip(), "```", "", _arguments(action),
                      ""]
    parts += ["## Exit codes", "", "| code | meaning |", "|---|---|",
              *[f"| {code} | {_escape(meaning)} |" for code, meaning in EXIT_CODES.items()]]
    return "\n".join(parts) + "\n"


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices.items())
    return []


def _arguments(parser: argparse.ArgumentParser) -> str:
    rows = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, (argparse._SubParsersAction, argparse._HelpAction)):
            continue
        name = ", ".join(action.option_strings) or action.metavar or action.dest
        if action.option_strings and action.nargs != 0:
            name += f" {action.metavar or action.dest.upper()}"
        if action.choices and not action.option_strings:
            name += f" ({' / '.join(action.choices)})"
        help_text = action.help % {"default": action.default} if "%(default)" in (action.help or "") else action.help
        rows.append(f"| `{name}` | {_escape(help_text or '')} |")
    return "\n".join(["| argument | meaning |", "|---|---|", *rows]) if rows else "(no arguments)"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
