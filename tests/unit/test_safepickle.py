"""Restore unpickles only allowed globals: real states load, forged skeletons run nothing."""

from __future__ import annotations

import builtins
import copyreg
import enum
import functools
import os
import pickle
import random
import subprocess
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

import ecsnap
from ecsnap import safepickle
from ecsnap.control import Opened, Steps
from ecsnap.errors import RestoreError
from ecsnap.flatten import FORMAT_VERSION, flatten
from ecsnap.loader import load_into
from ecsnap.restorer import restore
from ecsnap.safepickle import UnsafeGlobalError
from ecsnap.saved import unflatten
from smp._proto import snapshot_pb2
from tests.unit.test_flatten import read_back

RAN: list[str] = []  # what a payload's code did, had it run


def _record(what: str) -> None:
    RAN.append(what)


@dataclass
class Custom:
    value: int


class Color(enum.Enum):
    RED = 1


class Recorder:
    """Records its __setstate__ calls: restore builds it, save's dry run must not."""

    calls = 0

    def __setstate__(self, state: dict[str, Any]) -> None:
        Recorder.calls += 1
        self.__dict__.update(state)


class Evil:
    def __reduce__(self) -> Any:
        return (_record, ("evil",))


def _name(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


@pytest.fixture(autouse=True)
def _registries() -> Iterator[None]:
    """Every test starts and ends with both registries as they were, and nothing ran."""
    torch_before = torch.serialization.get_safe_globals()
    ours_before = dict(safepickle._registered)
    RAN.clear()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(torch_before)
    safepickle.clear_safe_globals()
    safepickle._registered.update(ours_before)
    assert not RAN, f"a payload ran: {RAN}"


def forged(skeleton: bytes) -> snapshot_pb2.Manifest:
    return snapshot_pb2.Manifest(format_version=FORMAT_VERSION, skeleton=skeleton)


def refused(skeleton: bytes) -> UnsafeGlobalError:
    with pytest.raises(UnsafeGlobalError) as info:
        unflatten(forged(skeleton), [])
    assert isinstance(info.value, pickle.UnpicklingError)  # as a damaged skeleton's error
    return info.value


def reduce_payload(func: Any, *args: Any) -> bytes:
    class Payload:
        def __reduce__(self) -> Any:
            return (func, args)

    return pickle.dumps({"x": ("plain", Payload())}, protocol=pickle.HIGHEST_PROTOCOL)


# -- what real saves hold loads -----------------------------------------------------------------


def _trained() -> tuple[nn.Module, list[torch.optim.Optimizer]]:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    optims: list[torch.optim.Optimizer] = [
        torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.8, 0.9)),
        torch.optim.AdamW(model.parameters(), lr=torch.tensor(1e-3), weight_decay=0.1),
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True),
    ]
    model(torch.randn(3, 4)).sum().backward()
    for o in optims:
        o.step()
    return model, optims


def test_optimizer_states_restore_into_fresh_optimizers() -> None:
    model, optims = _trained()
    state: dict[str, Any] = {"model": model, **{f"o{i}": o for i, o in enumerate(optims)}}
    tree = read_back(state)
    model2, fresh = _trained()
    live: dict[str, Any] = {"model": model2, **{f"o{i}": o for i, o in enumerate(fresh)}}
    load_into(live, tree)
    for old, new in zip(optims, fresh, strict=True):
        a, b = old.state_dict(), new.state_dict()
        assert a["param_groups"] == b["param_groups"]
        for k, s in a["state"].items():
            assert all(torch.equal(v, b["state"][k][n]) for n, v in s.items())


def _schedulers(o: torch.optim.Optimizer) -> dict[str, Any]:
    return {
        "step": lr_scheduler.StepLR(o, 2),
        "multistep": lr_scheduler.MultiStepLR(o, [1, 3]),  # its milestones are a Counter
        "cosine": lr_scheduler.CosineAnnealingLR(o, 10),
        "onecycle": lr_scheduler.OneCycleLR(o, 1.0, total_steps=10),
        "lambda": lr_scheduler.LambdaLR(o, lambda e: 0.9**e),
        "plateau": lr_scheduler.ReduceLROnPlateau(o),
        "cyclic": lr_scheduler.CyclicLR(o, 0.01, 0.1),
        "warm": lr_scheduler.CosineAnnealingWarmRestarts(o, 5),
        "seq": lr_scheduler.SequentialLR(
            o, [lr_scheduler.LinearLR(o), lr_scheduler.ExponentialLR(o, 0.9)], milestones=[2]
        ),
    }


def test_scheduler_states_restore() -> None:
    o = torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.9)
    saved = _schedulers(o)
    o.step()
    for s in saved.values():
        s.step(*([1.0] if isinstance(s, lr_scheduler.ReduceLROnPlateau) else []))
    tree = read_back(saved)
    live = _schedulers(torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.9))
    load_into(live, tree)
    for key, s in saved.items():
        a, b = s.state_dict(), live[key].state_dict()
        assert a.keys() == b.keys(), key
        assert repr(a) == repr(b), key


def test_rng_state_restores_the_same_draws() -> None:
    np = pytest.importorskip("numpy")
    tree = read_back({"rng": ecsnap.RNGState()})
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    load_into({"rng": ecsnap.RNGState()}, tree)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def test_values_and_containers_restore() -> None:
    state = {
        "containers": OrderedDict(
            d=defaultdict(list, a=[1]),
            q=deque([1, 2], maxlen=3),
            c=Counter("abca"),
            s={1, 2},
            f=frozenset({3}),
            b=bytearray(b"xy"),
            misc=(complex(1, 2), slice(1, 9, 2), range(3), ..., None, b"raw", float("inf")),
        ),
        "torch": {
            "size": torch.Size([2, 3]),
            "dtypes": [torch.float32, torch.bfloat16, torch.int8, torch.bool, torch.float8_e4m3fn],
            "device": [torch.device("cpu"), torch.device("cuda", 1)],
            "layout": [torch.strided, torch.sparse_coo],
            "format": [torch.channels_last, torch.contiguous_format],
        },
        # A StatefulDataLoader-style state: nested dicts of ints, strings and lists.
        "loader": {
            "_sampler_iter_state": {"samples_yielded": 64, "sampler": {"epoch": 2}},
            "_index_sampler_state": None,
            "_num_yielded": 4,
            "_snapshot": {"_worker_snapshots": {"worker_0": {"fetcher_state": [0, 1]}}},
        },
        "module": nn.Linear(2, 2).state_dict(),  # an OrderedDict with a _metadata attribute
    }
    fresh: dict[str, Any] = {}
    load_into(fresh, read_back(state))
    assert fresh["containers"] == state["containers"]
    assert fresh["containers"]["d"].default_factory is list
    assert fresh["containers"]["q"].maxlen == 3
    assert fresh["torch"] == state["torch"] and fresh["loader"] == state["loader"]
    assert fresh["module"]._metadata == state["module"]._metadata  # type: ignore[attr-defined]


def test_numpy_values_restore() -> None:
    np = pytest.importorskip("numpy")
    state = {
        "arrays": [np.arange(6.0).reshape(2, 3), np.arange(6).reshape(2, 3)[:, ::2], np.array([])],
        "objects": np.array([1, "a", None], dtype=object),
        "scalars": [np.float32(1.5), np.int64(3), np.bool_(True), np.str_("s")],
        "dtypes": [np.dtype("f4"), np.dtype([("a", "<i4"), ("b", "f8")]), np.float32, np.int8],
        "dtype_classes": [type(np.dtype("f4"))],
    }
    fresh: dict[str, Any] = {}
    load_into(fresh, read_back(state))
    for a, b in zip(fresh["arrays"], state["arrays"], strict=True):
        assert np.array_equal(a, b) and a.dtype == b.dtype
    assert list(fresh["objects"]) == [1, "a", None]
    assert fresh["scalars"] == state["scalars"] and fresh["dtypes"] == state["dtypes"]
    assert fresh["dtype_classes"] == state["dtype_classes"]


def test_numpy_pickles_of_both_spellings_load() -> None:
    np = pytest.importorskip("numpy")
    # _reconstruct, named as NumPy 1 or 2 does (protocol 3: GLOBAL names, no frame lengths).
    data = pickle.dumps(np.arange(3), protocol=3)
    for old, new in ((b"numpy._core", b"numpy.core"), (b"numpy.core", b"numpy._core")):
        other = data.replace(old, new) if old in data else data
        assert list(safepickle.SafeUnpickler(other).load()) == [0, 1, 2]


# -- forged skeletons run nothing ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("func", "args"),
    [
        (os.system, ("true",)),
        (builtins.eval, ("1 + 1",)),
        (builtins.exec, ("pass",)),
        (builtins.getattr, (str, "join")),
        (builtins.__import__, ("os",)),
        (subprocess.Popen, (["true"],)),
        (_record, ("reduce",)),
        (functools.partial, (_record, "partial")),
        (copyreg._reconstructor, (Custom, object, None)),  # type: ignore[attr-defined]
    ],
    ids=lambda v: getattr(v, "__name__", "args"),
)
def test_classic_payloads_are_refused(func: Any, args: tuple[Any, ...]) -> None:
    exc = refused(reduce_payload(func, *args))
    assert _name(func) in str(exc) and exc.name == _name(func)
    assert "ecsnap.add_safe_globals(" in str(exc)
    assert "torch.serialization.add_safe_globals(" in str(exc)


def test_classes_of_a_module_are_refused() -> None:
    assert refused(pickle.dumps({"x": ("plain", Evil())})).name == _name(_record)
    assert refused(pickle.dumps({"x": ("plain", Custom(1))})).name == _name(Custom)
    assert refused(pickle.dumps({"x": ("plain", type(None))})).name == "builtins.type"
    factory = defaultdict(functools.partial(_record, "factory"))
    assert refused(pickle.dumps({"x": ("plain", factory)})).name == "functools.partial"


def _short(s: bytes) -> bytes:
    return b"\x8c" + bytes([len(s)]) + s  # SHORT_BINUNICODE


@pytest.mark.parametrize(
    "payload",
    [
        # STACK_GLOBAL from strings on the stack
        b"\x80\x04" + _short(b"os") + _short(b"system") + b"\x93" + _short(b"true") + b"\x85R.",
        # ... and from strings put in and got from the memo
        b"\x80\x04" + _short(b"posix") + b"\x94" + _short(b"system") + b"\x94"
        b"h\x00h\x01\x93" + _short(b"true") + b"\x85R.",
        # protocol 0: GLOBAL + REDUCE, INST, OBJ
        b"cos\nsystem\n(S'true'\ntR.",
        b"(S'true'\nios\nsystem\n.",
        b"(cos\nsystem\nS'true'\no.",
        # a dotted qualname reaching through an allowed module
        b"\x80\x04"
        + _short(b"torch")
        + _short(b"os.system")
        + b"\x93"
        + _short(b"true")
        + b"\x85R.",
    ],
    ids=["stack_global", "memo", "global", "inst", "obj", "dotted"],
)
def test_hand_made_payloads_are_refused(payload: bytes) -> None:
    exc = refused(payload)
    assert "system" in exc.name


def test_extension_codes_cannot_reach_past_find_class() -> None:
    code = 0x3EC5
    payload = b"\x80\x02\x83" + code.to_bytes(2, "little") + _short(b"true") + b"\x85R."  # EXT2
    with pytest.raises(ValueError, match="unregistered extension code"):
        unflatten(forged(payload), [])  # none registered: the C unpickler refuses
    copyreg.add_extension("os", "system", code)  # type: ignore[no-untyped-call]
    try:
        getcwd = b"\x80\x02\x83" + code.to_bytes(2, "little") + b"."
        pickle.loads(getcwd)  # now copyreg's cache holds os.system: a find_class would not see it
        exc = refused(payload)
        assert "extension code" in str(exc)
        copyreg.add_extension("collections", "OrderedDict", code + 1)  # type: ignore[no-untyped-call]
        try:  # save() pickles an OrderedDict by its code now: refused at once, not at restore
            with pytest.raises(TypeError, match="extension code"):
                flatten({"od": OrderedDict(a=1)})
        finally:
            copyreg.remove_extension("collections", "OrderedDict", code + 1)  # type: ignore[no-untyped-call]
    finally:
        copyreg.remove_extension("os", "system", code)  # type: ignore[no-untyped-call]


def test_tensor_ids_must_be_in_the_manifest() -> None:
    with pytest.raises(pickle.UnpicklingError, match="not saved"):
        unflatten(forged(b"\x80\x04K\x07Q."), [])  # BINPERSID 7, no tensors


def test_numpy_cannot_be_made_to_build_objects_from_raw_bytes() -> None:
    np = pytest.importorskip("numpy")
    frombuffer = np.empty(1).__reduce_ex__(5)[0]
    with pytest.raises(ValueError, match="OBJECT"):
        frombuffer(b"\0" * 8, np.dtype("O"), (1,), "C")


# -- what users allow ---------------------------------------------------------------------------


def test_registered_types_restore_through_either_route() -> None:
    state = {"cfg": Custom(7), "color": Color.RED}
    with pytest.raises(TypeError):
        flatten(state)
    ecsnap.add_safe_globals(Custom)
    torch.serialization.add_safe_globals([Color])
    fresh: dict[str, Any] = {}
    load_into(fresh, read_back(state))
    assert fresh == state
    torch.serialization.clear_safe_globals()
    safepickle.clear_safe_globals()
    with (
        safepickle.safe_globals((Custom, _name(Custom))),
        torch.serialization.safe_globals([(Color, _name(Color))]),
    ):
        skeleton = flatten(state).manifest.skeleton
        assert safepickle.SafeUnpickler(skeleton).load()  # tensor-free: no persistent ids
    with pytest.raises(UnsafeGlobalError, match=_name(Custom)):
        unflatten(forged(skeleton), [])  # the registrations ended with the with-blocks


def test_registration_takes_objects_and_named_pairs_only() -> None:
    with pytest.raises(TypeError, match=r"module\.name"):
        ecsnap.add_safe_globals(torch.float32)  # no __qualname__: name it
    with pytest.raises(TypeError, match=r"module\.name"):
        ecsnap.add_safe_globals((Custom, 3))


def test_save_refuses_an_unregistered_type_early_and_builds_nothing() -> None:
    with pytest.raises(TypeError) as info:
        flatten({"cfg": {"inner": [Custom(1)]}})
    message = str(info.value)
    assert "cfg/inner/0" in message and _name(Custom) in message
    assert "ecsnap.add_safe_globals(Custom)" in message
    with pytest.raises(TypeError, match=r"functools\.partial"):
        flatten({"f": functools.partial(int)})
    cycle: list[Any] = [1]
    cycle.append(cycle)
    with pytest.raises(TypeError, match="entry c/1"):
        flatten({"c": [cycle, Custom(2)]})
    ecsnap.add_safe_globals(Recorder)
    r = Recorder()
    r.x = 1  # type: ignore[attr-defined]
    Recorder.calls = 0
    tree = read_back({"r": r})
    assert Recorder.calls == 1  # once, by the restore; save's check built nothing
    assert tree["r"][1].x == 1


def test_a_refused_skeleton_is_a_restore_error_for_the_user(tmp_path: Path) -> None:
    arena = tmp_path / "arena"
    arena.write_bytes(bytes(64))
    manifest = forged(reduce_payload(os.system, "true")).SerializeToString()

    class Client:
        def list_steps(self, rank: int) -> Any:
            return Steps([3], None, [1])

        def open_snapshot(self, rank: int, step: int, verify: bool) -> Opened:
            return Opened(0, str(arena), 64, manifest, 0.0)

    session: Any = SimpleNamespace(
        rank=0,
        env=SimpleNamespace(world_size=1),
        layout=SimpleNamespace(protected=False),
        client=Client(),
        all_gather=lambda x: [x],
    )
    with pytest.raises(RestoreError) as info:
        restore(session, {}, verify=False)
    message = str(info.value)
    assert "cannot restore step 3" in message and _name(os.system) in message
    assert "ecsnap.add_safe_globals(" in message
