"""Unpickling files from elsewhere without letting them run code, corrupt the process or run away.

A pickle can name any importable callable and have the unpickler call it. Every pickle this project
reads — the authors' checkpoints, their pairs files, the benchmarks' annotations — goes through
:class:`RestrictedUnpickler`, which

- hands out only the globals on an explicit allow-list and refuses everything else *before* it is
  called, naming the file and the refused global;
- never lets the pickle modify an object it did not create: BUILD (``__setstate__`` or an attribute
  update) onto a handed-out class, function or shared stand-in is refused. Callables are handed out
  wrapped in a :class:`Constructor`, classes only when immutable (builtins) or sealed
  (:class:`SealedType`), so a file cannot, say, replace ``argparse.Namespace.__init__`` for every
  later load in the process. Fresh instances the pickle built may still be BUILT; stand-ins that
  accept state (numpy arrays, dtypes) validate it in their own ``__setstate__``;
- caps the pickle's size, the nesting depth of what it returns (32), and the number of elements
  the result holds counting shared sub-structures each time they are reachable (at most one per
  byte of pickle), so a small file cannot expand into a huge structure by referencing one
  container many times. Self-referencing structures are refused.
"""

from __future__ import annotations

import argparse
import pickle
from typing import Any, Callable, Mapping

MAX_DEPTH = 32
_IMMUTABLE_TYPE = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE: builtin classes whose attributes cannot be set
_LEAF_TYPES = frozenset({str, bytes, bytearray, int, float, bool, complex, type(None)})


class RefusedBuild(pickle.UnpicklingError):
    """A pickle tried to modify what it did not create; :meth:`RestrictedUnpickler.load`
    re-raises it as the reader's refusal, naming the file."""


class Sealed:
    """Base of objects handed to a pickle that it may use but never modify (BUILD is refused)."""

    __slots__ = ()

    def __setstate__(self, state):
        raise RefusedBuild(f"an attribute update (BUILD) onto {self!r}")


class Constructor(Sealed):
    """An allowed callable as handed to a pickle: callable, not modifiable."""

    __slots__ = ("_function", "_name")

    def __init__(self, function: Callable, name: str):
        self._function = function
        self._name = name

    def __call__(self, *args):
        return self._function(*args)

    def __repr__(self):
        return self._name


class SealedType(type):
    """Metaclass of stand-in classes handed to pickles (for NEWOBJ): attributes cannot be set."""

    def __setattr__(cls, name, value):
        raise RefusedBuild(f"setting {name!r} on class {cls.__name__}")

    def __delattr__(cls, name):
        raise RefusedBuild(f"deleting {name!r} from class {cls.__name__}")


def _children(value: Any):
    """The values a container holds (None for a leaf): what the shape check walks."""
    if isinstance(value, dict):
        return (item for pair in value.items() for item in pair)
    if isinstance(value, (list, tuple, set, frozenset)):
        return iter(value)
    if isinstance(value, argparse.Namespace):
        return iter(vars(value).values())
    return None


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose only importable names are those in ``allowed``.

    Args:
        file: a binary file object positioned at the pickle.
        source: the file's name, for error messages.
        allowed: ``{(module, name): object}`` the pickle may reference.
        refusal: the exception class raised for anything else (a ``pickle.UnpicklingError``).
        contents: what such files may hold, in words, for the error message.
        size: the pickle's size in bytes (what ``file`` holds).
        max_bytes: the largest pickle accepted; checked before anything is read.
    """

    def __init__(self, file, source: str, allowed: Mapping[tuple[str, str], Any],
                 refusal: type[pickle.UnpicklingError], contents: str, size: int, max_bytes: int):
        super().__init__(file)
        self.source = source
        self._allowed = allowed
        self._refusal = refusal
        self._contents = contents
        self._size = size
        self._max_bytes = max_bytes

    def refuse(self, what: str) -> pickle.UnpicklingError:
        return self._refusal(f"{self.source}: refusing to load {what}; {self._contents}")

    def find_class(self, module: str, name: str) -> Any:
        try:
            found = self._allowed[(module, name)]
        except KeyError:
            raise self.refuse(f"{module}.{name}") from None
        if isinstance(found, (Sealed, SealedType)) or (
                isinstance(found, type) and found.__flags__ & _IMMUTABLE_TYPE):
            return found
        return Constructor(found, f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise self.refuse(f"persistent id {pid!r:.80}")

    def load(self) -> Any:
        if self._size > self._max_bytes:
            raise self._refusal(f"{self.source}: the pickle is {self._size:,} bytes, more than "
                                f"the {self._max_bytes:,} this reader accepts")
        try:
            result = super().load()
        except RefusedBuild as error:
            raise self.refuse(str(error)) from None
        self._check_shape(result)
        return result

    def _check_shape(self, root: Any) -> None:
        """Depth, cycles and expanded element count of the unpickled structure (iterative)."""
        children = _children(root)
        if children is None:
            return
        limit = self._size
        expanded: dict[int, int] = {}  # id -> elements under a finished container
        on_path = {id(root)}
        stack = [[root, children, 1]]  # container, its remaining children, elements so far
        while stack:
            frame = stack[-1]
            for child in frame[1]:
                if type(child) in _LEAF_TYPES:
                    frame[2] += 1
                    continue
                grandchildren = _children(child)
                if grandchildren is None:
                    frame[2] += 1
                elif id(child) in expanded:
                    frame[2] += expanded[id(child)]
                elif id(child) in on_path:
                    raise self._refusal(f"{self.source}: refusing a self-referencing structure")
                elif len(stack) >= MAX_DEPTH:
                    raise self._refusal(f"{self.source}: refusing containers nested deeper than "
                                        f"{MAX_DEPTH}")
                else:
                    on_path.add(id(child))
                    stack.append([child, grandchildren, 1])
                    break
                if frame[2] > limit:
                    raise self._expanded_error(limit)
            else:
                stack.pop()
                on_path.discard(id(frame[0]))
                expanded[id(frame[0])] = frame[2]
                if stack:
                    stack[-1][2] += frame[2]
                    if stack[-1][2] > limit:
                        raise self._expanded_error(limit)

    def _expanded_error(self, limit: int) -> pickle.UnpicklingError:
        return self._refusal(
            f"{self.source}: refusing a structure whose shared parts expand to more than {limit:,} "
            "elements (one per byte of pickle)")
