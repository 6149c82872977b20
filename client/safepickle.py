"""What a snapshot's skeleton may name: restore never runs code that ecsnap did not write.

Unpickling calls whatever callables the pickle names, so a forged snapshot could run any code in
the trainer at restore(). The skeleton is therefore unpickled as `torch.load(weights_only=True)`
loads: a global the pickle names is looked up in an allow-list, never imported, and anything not
on it is refused (`UnsafeGlobalError`). Allowed are

- builtin containers and values: dict, list, tuple, set, frozenset, bytes, bytearray, str, int,
  float, bool, complex, slice, range, Ellipsis, NotImplemented;
- collections.OrderedDict, Counter, deque, defaultdict (its default factory is a global of its
  own, so it must be allowed too: `defaultdict(list)` loads, a factory of the user's does not);
- torch.Size, torch.device, every torch dtype, layout (`torch.serialization._get_layout`) and
  memory format;
- with NumPy installed (imported only when a skeleton names it): arrays, scalars, dtypes and
  scalar types as NumPy pickles them, under both its `numpy.core` and `numpy._core` spellings
  (so `numpy.random.get_state()` restores across NumPy 1 and 2);
- what the user allowed, in the restoring process: `ecsnap.add_safe_globals(...)` and
  `torch.serialization.add_safe_globals([...])` (read at every load), objects or
  (object, "module.name") pairs as torch takes them.

Tensors never enter the pickle (they are persistent ids, see `flatten`). The C unpickler takes a
pickle's EXT opcodes (copyreg extension codes) from copyreg's cache without asking `find_class`;
no code is registered unless a program calls `copyreg.add_extension`, and when one is, a skeleton
using any EXT opcode is refused. `check` runs the same rule over a skeleton without building
anything, so save() can refuse what restore() would.
"""

from __future__ import annotations

import builtins
import collections
import copyreg
import io
import pickle
import pickletools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import torch

_MISSING = object()
# What the user allowed through `add_safe_globals`: "module.qualname" -> object.
_registered: dict[str, object] = {}


class UnsafeGlobalError(pickle.UnpicklingError):
    """The skeleton names a global that is not allowed; `name` is its "module.qualname".
    `registrable`: whether allowing `name` (add_safe_globals) would let it load."""

    def __init__(self, name: str, message: str = "") -> None:
        self.registrable = not message
        short = name.rsplit(".", 1)[-1]
        super().__init__(
            message
            or f"the snapshot names {name}, which ecsnap does not unpickle (restore runs no code "
            "a snapshot names unless it is allowed). If it is a type of yours and safe to "
            f"rebuild, allow it before restore(): ecsnap.add_safe_globals({short}) or "
            f"torch.serialization.add_safe_globals([{short}])"
        )
        self.name = name


def qualified_name(obj: object) -> str | None:
    """The name pickle writes for `obj` as a global ("module.qualname"), or None if it has none."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    return f"{module}.{qualname}"


def _entries(objs: Iterable[object]) -> Iterator[tuple[str, object]]:
    """(name, object) for every entry: an object, or (object, "module.name") as torch takes."""
    for entry in objs:
        if isinstance(entry, tuple):
            if len(entry) != 2 or not isinstance(entry[1], str):
                raise TypeError(f"expected (object, 'module.name'), got {entry!r}")
            yield entry[1], entry[0]
            continue
        name = qualified_name(entry)
        if name is None:
            raise TypeError(
                f"{entry!r} has no __module__ and __qualname__: pass (obj, 'module.name'), the "
                "name pickle writes for it"
            )
        yield name, entry


def add_safe_globals(*objs: object) -> None:
    """Allow restore to unpickle these classes or functions, named in a snapshot's skeleton.

    A snapshot may name only containers, numbers, strings, torch and NumPy values; restore()
    refuses any other type (a forged snapshot must not run code in the trainer) and save()
    refuses to save it. Allow a type of yours that is safe to rebuild from its pickled state,
    e.g. `ecsnap.add_safe_globals(MyConfig, MyEnum)`, in the process that saves and the one
    that restores. An entry may be (obj, "module.name") when pickle names obj otherwise. Types
    allowed with `torch.serialization.add_safe_globals` are allowed here too."""
    _registered.update(_entries(objs))


def clear_safe_globals() -> None:
    """Forget every global allowed through `add_safe_globals`."""
    _registered.clear()


@contextmanager
def safe_globals(*objs: object) -> Iterator[None]:
    """`add_safe_globals(*objs)` for the duration of a with-block (as `torch.serialization`'s)."""
    before = dict(_registered)
    add_safe_globals(*objs)
    try:
        yield
    finally:
        _registered.clear()
        _registered.update(before)


@cache
def _builtin_table() -> dict[str, object]:
    table: dict[str, object] = {
        f"builtins.{t.__name__}": t
        for t in (dict, list, tuple, set, frozenset, bytes, bytearray, str, int, float, bool)
    }
    table.update({f"builtins.{t.__name__}": t for t in (complex, slice, range)})
    table["builtins.Ellipsis"] = builtins.Ellipsis
    table["builtins.NotImplemented"] = builtins.NotImplemented
    for c in (collections.OrderedDict, collections.Counter, collections.deque):
        table[f"collections.{c.__name__}"] = c
    # Its factory is loaded by find_class too: only an allowed one can be named.
    table["collections.defaultdict"] = collections.defaultdict
    table["torch.Size"] = torch.Size
    table["torch.device"] = torch.device
    table["torch.serialization._get_layout"] = torch.serialization._get_layout
    for attr, value in vars(torch).items():
        if isinstance(value, (torch.dtype, torch.memory_format)):
            table[f"torch.{attr}"] = value
    return table


@cache
def _memory_formats() -> dict[str, object]:
    # A memory format has no __module__: pickle names it "torch.<format>" inside whichever loaded
    # module it finds first holding `torch` (e.g. "torch._utils"), so any module is accepted.
    return {
        f"torch.{attr}": v for attr, v in vars(torch).items() if isinstance(v, torch.memory_format)
    }


@cache
def _numpy_table() -> dict[str, object]:
    try:
        import numpy as np
    except ImportError:
        return {}
    objs: list[object] = [np.ndarray, np.dtype]
    # The functions arrays and scalars pickle with, taken from their reductions (their modules
    # differ between NumPy 1 and 2).
    objs.append(np.empty(0).__reduce__()[0])  # _reconstruct (protocols < 5, object arrays)
    objs.append(np.empty(1).__reduce_ex__(5)[0])  # _frombuffer
    objs.append(np.float64(0).__reduce__()[0])  # scalar
    objs.extend(set(np.sctypeDict.values()))  # scalar types: numpy.float32, ...
    objs.extend(type(np.dtype(code)) for code in np.typecodes["All"])  # numpy.dtypes.*DType
    dtypes_module = getattr(np, "dtypes", None)
    if dtypes_module is not None:
        objs.extend(
            v
            for v in vars(dtypes_module).values()
            if isinstance(v, type) and issubclass(v, np.dtype)
        )
    table: dict[str, object] = {}
    for obj in objs:
        name = qualified_name(obj)
        if name is None:
            continue
        table[name] = obj
        for old, new in (("numpy._core.", "numpy.core."), ("numpy.core.", "numpy._core.")):
            if name.startswith(old):
                table[new + name.removeprefix(old)] = obj
    return table


def _user_table() -> dict[str, object]:
    table: dict[str, object] = {}
    get_torch = getattr(torch.serialization, "get_safe_globals", None)  # torch >= 2.4
    if get_torch is not None:
        for entry in get_torch():
            try:
                table.update(_entries([entry]))
            except TypeError:
                continue  # not an entry torch.load could use either
    table.update(_registered)
    return table


class _Allowed:
    """The allow-list of one load: built-ins at once, user registrations read when needed."""

    def __init__(self) -> None:
        self._user: dict[str, object] | None = None

    def resolve(self, module: str, name: str) -> object:
        full = f"{module}.{name}"
        obj = _builtin_table().get(full, _MISSING)
        if obj is _MISSING:
            obj = _memory_formats().get(name, _MISSING)
        if obj is _MISSING and (module == "numpy" or module.startswith("numpy.")):
            obj = _numpy_table().get(full, _MISSING)
        if obj is _MISSING:
            if self._user is None:
                self._user = _user_table()
            obj = self._user.get(full, _MISSING)
        if obj is _MISSING:
            raise UnsafeGlobalError(full)
        return obj


_EXT = frozenset({"EXT1", "EXT2", "EXT4"})


def _refuse_extensions(data: bytes) -> None:
    """With copyreg extension codes in use, the C unpickler would take an EXT opcode's object
    from copyreg's cache, past find_class: refuse any such opcode."""
    if not (
        getattr(copyreg, "_inverted_registry", None) or getattr(copyreg, "_extension_cache", None)
    ):
        return  # no code is registered: an EXT opcode fails to load ("unregistered extension")
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in _EXT:
            raise UnsafeGlobalError(
                f"copyreg extension code {arg}",
                f"the snapshot names a global by copyreg extension code {arg}, which ecsnap "
                "does not unpickle (restore runs no code a snapshot names unless it is "
                "allowed): save where no copyreg.add_extension() code covers the app state",
            )


class SafeUnpickler(pickle.Unpickler):
    """A pickle.Unpickler of `data` whose globals are those of the allow-list (see the module
    docstring); UnsafeGlobalError for any other. Subclasses add `persistent_load`."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self._data = data
        self._allowed = _Allowed()

    def find_class(self, module: str, name: str) -> Any:
        return self._allowed.resolve(module, name)

    def load(self) -> Any:
        _refuse_extensions(self._data)
        return super().load()


class _Stub:
    """Stands in, in a dry run, for every allowed global and everything built from one."""

    def __new__(cls, *args: object, **kwargs: object) -> _Stub:
        return object.__new__(cls)

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __call__(self, *args: object, **kwargs: object) -> _Stub:
        return _Stub()

    def __setstate__(self, state: object) -> None:
        pass

    def __setitem__(self, key: object, value: object) -> None:
        pass

    def append(self, value: object) -> None:
        pass

    def extend(self, values: object) -> None:
        pass

    def add(self, value: object) -> None:
        pass


class _DryRun(SafeUnpickler):
    def find_class(self, module: str, name: str) -> Any:
        self._allowed.resolve(module, name)  # refuses what a restore would refuse
        return _Stub  # but builds nothing: no constructor of the user's runs at save()

    def persistent_load(self, pid: Any) -> Any:
        return None


def check(data: bytes) -> None:
    """Raise UnsafeGlobalError if `SafeUnpickler` would refuse a global `data` names. A dry run:
    every global resolves to a stand-in, so nothing is built and no allowed constructor runs."""
    _DryRun(data).load()
