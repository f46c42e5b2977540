"""`magsrl --help` and every subcommand's (issue 17): every option has help text that names
its default, no reStructuredText backticks reach the terminal."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from magsrl.cli import build_parser


def parsers(
    parser: argparse.ArgumentParser, name: str = "magsrl"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from parsers(sub, f"{name} {sub_name}")


def option_problems() -> list[str]:
    problems = []
    for name, parser in parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            if isinstance(action, argparse._SubParsersAction):
                continue
            flag = "/".join(action.option_strings) or action.dest
            text = action.help or ""
            if not text or text == argparse.SUPPRESS:
                problems.append(f"{name} {flag}: no help")
                continue
            has_default = action.option_strings and action.default not in (None, False, [])
            if has_default and "default" not in text:
                problems.append(f"{name} {flag}: help does not name its default")
    return problems


def test_every_option_has_help_with_its_default() -> None:
    """Pins: options such as `magsrl up --ready-timeout` and `magsrl train --url` had no
    help, and others hid their default."""
    assert option_problems() == []


def test_no_rst_backticks_in_help() -> None:
    """Pins: descriptions built from module docstrings printed ``magsrl serve`` literally."""
    found = []
    for name, parser in parsers(build_parser()):
        if "``" in parser.format_help():
            found.append(name)
    assert found == []
