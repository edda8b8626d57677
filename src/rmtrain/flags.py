"""Command-line flags built from the typed configs: one flag per field, its help from the
field, `train`'s under the headings of `config.GROUPS`."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from rmtrain.coerce import parse_bool
from rmtrain.config import GROUPS, TrainConfig


def _base_type(tp: Any) -> Any:
    """`int | None` -> int; `list[str]` -> str (argparse uses nargs for lists)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _base_type(args[0])
    if origin is list:
        return args[0]
    return tp


def _parse_bool(text: str) -> bool:
    """The YAML reader's words (`coerce.parse_bool`), as argparse reports a bad value."""
    try:
        return parse_bool(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, got {text!r}") from None


def add_config_arguments(parser: argparse.ArgumentParser, cls: type = TrainConfig) -> None:
    """One flag per dataclass field, under its group's heading; defaults are SUPPRESSed so only
    the flags given override YAML."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if cls is not TrainConfig:  # a handful of options: no headings
        for name, f in fields.items():
            _add_flag(parser, f, hints[name])
        return
    for title, names in GROUPS.items():
        section = parser.add_argument_group(title)
        for name in names:
            _add_flag(section, fields[name], hints[name])


def _add_flag(section: Any, f: dataclasses.Field, hint: Any) -> None:
    flag = "--" + f.name.replace("_", "-")
    base = _base_type(hint)
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    quiet = f.metadata.get("required") or not f.metadata.get("show_default", True)
    quiet = quiet or "default:" in f.metadata["help"]
    help_text = f.metadata["help"] + ("" if quiet else f" (default: {default})")
    kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
    if base is bool:
        kwargs.update(nargs="?", const=True, type=_parse_bool)
    else:
        kwargs["type"] = base
        for key in ("nargs", "const", "action", "choices"):
            if key in f.metadata:
                kwargs[key] = f.metadata[key]
    if f.metadata.get("required"):
        kwargs["required"] = True
    section.add_argument(flag, **kwargs)


def options_reference() -> str:
    """`docs/options.md`: every training option under its group, with its default and help, as
    declared in `config.TrainConfig` (a test keeps the file equal to this)."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    lines = [
        "# Training options",
        "",
        "Generated from `rmtrain.config.TrainConfig` by `rmtrain.flags.options_reference()`; "
        "`rmtrain train --help` prints the same. In YAML, use the group as a section and the "
        "option name with underscores.",
    ]
    for group, names in GROUPS.items():
        lines += ["", f"## {group}", "", "| option | default | what it does |", "|---|---|---|"]
        for name in names:
            f = fields[name]
            default = f.default_factory() if callable(f.default_factory) else f.default
            text = " ".join(f.metadata["help"].split()).replace("|", "\\|")
            lines.append(f"| `--{name.replace('_', '-')}` | `{default}` | {text} |")
    return "\n".join(lines) + "\n"
