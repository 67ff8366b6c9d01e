"""Unpickling files from elsewhere without letting them run code.

A pickle can name any importable callable and have the unpickler call it. Every pickle this project
reads — the authors' checkpoints, their pairs files, the benchmarks' annotations — goes through
:class:`RestrictedUnpickler`, which hands out only the globals on an explicit allow-list and
refuses everything else *before* it is called, naming the file and the refused global.
"""

from __future__ import annotations

import pickle
from typing import Any, Mapping


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose only importable names are those in ``allowed``.

    Args:
        file: a binary file object positioned at the pickle.
        source: the file's name, for error messages.
        allowed: ``{(module, name): object}`` the pickle may reference.
        refusal: the exception class raised for anything else (a ``pickle.UnpicklingError``).
        contents: what such files may hold, in words, for the error message.
    """

    def __init__(self, file, source: str, allowed: Mapping[tuple[str, str], Any],
                 refusal: type[pickle.UnpicklingError], contents: str):
        super().__init__(file)
        self.source = source
        self._allowed = allowed
        self._refusal = refusal
        self._contents = contents

    def refuse(self, what: str) -> pickle.UnpicklingError:
        return self._refusal(f"{self.source}: refusing to load {what}; {self._contents}")

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise self.refuse(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise self.refuse(f"persistent id {pid!r}")
