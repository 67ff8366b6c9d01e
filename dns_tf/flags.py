"""Configuration as frozen dataclasses; command-line flags derived from them.

A flag and its default exist in exactly one place: the dataclass field. ``add_arguments`` turns the
fields of a config class into ``--flags`` of an ``argparse`` parser, ``from_arguments`` builds the
config back from the parsed namespace. A field's help text is its ``metadata["help"]``. A boolean
field is ``--flag`` / ``--no-flag``; with ``metadata["explicit_value"]`` it also takes
``--flag=true|false``, the spelling of ``tensorflow_model_server``'s flags.

Example:

    @dataclasses.dataclass(frozen=True)
    class TrainConfig:
        learning_rate: float = field(1e-4, "Adam learning rate")

    add_arguments(parser, TrainConfig)
    config = from_arguments(TrainConfig, parser.parse_args())
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def field(default: Any, help: str, **kwargs) -> Any:
    """A dataclass field with a default and a help text for its command-line flag."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default),
                                 metadata={"help": help, **kwargs})
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def _flag_type(annotation: Any) -> tuple[Any, bool]:
    """Returns (element type, is_sequence) for a field annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        return _flag_type(non_none[0])
    if origin in (tuple, list):
        return (args[0] if args else str), True
    return annotation, False


class _ExplicitBool(argparse.Action):
    """``--flag``, ``--no-flag`` or ``--flag=true|false``."""

    def __init__(self, option_strings, dest, **kwargs):
        name = option_strings[0]
        super().__init__([name, "--no-" + name[2:]], dest, nargs="?", **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string.startswith("--no-"):
            value = False
        elif values is None or values.lower() in ("true", "1"):
            value = True
        elif values.lower() in ("false", "0"):
            value = False
        else:
            parser.error(f"{option_string} takes true or false, got {values!r}")
        setattr(namespace, self.dest, value)


def add_arguments(parser: argparse.ArgumentParser, config_cls: type, prefix: str = "") -> None:
    """Adds one ``--<prefix><field>`` flag per field of the dataclass ``config_cls``."""
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if f.metadata.get("cli") is False:
            continue
        name = "--" + prefix + f.name
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind, is_sequence = _flag_type(hints[f.name])
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        kwargs: dict[str, Any] = {"dest": prefix + f.name, "default": default}
        if kind is bool:
            action = (_ExplicitBool if f.metadata.get("explicit_value")
                      else argparse.BooleanOptionalAction)
            parser.add_argument(name, action=action,
                                help=f"{help_text} (default: {default})", **kwargs)
            continue
        if is_sequence:
            kwargs["nargs"] = "+"
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(name, type=kind, help=f"{help_text} (default: {default})", **kwargs)


def from_arguments(config_cls: type[T], args: argparse.Namespace, prefix: str = "", **overrides) -> T:
    """Builds ``config_cls`` from flags added by :func:`add_arguments`."""
    values = {}
    for f in dataclasses.fields(config_cls):
        key = prefix + f.name
        if hasattr(args, key):
            value = getattr(args, key)
            if isinstance(value, list):
                value = tuple(value)
            values[f.name] = value
    values.update(overrides)
    return config_cls(**values)
