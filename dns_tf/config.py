"""Configuration as frozen dataclasses; command-line flags derived from them.

A flag and its default exist in exactly one place: the dataclass field. ``add_arguments`` turns the
fields of a config class into ``--flags`` of an ``argparse`` parser, ``from_arguments`` builds the
config back from the parsed namespace. A field's help text is its ``metadata["help"]``.

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
            parser.add_argument(name, action=argparse.BooleanOptionalAction,
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
