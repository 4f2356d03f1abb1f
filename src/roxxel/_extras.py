"""Extra state saved in the same checkpoint as the model: data iterators, configs, EMA, RNGs.

`Checkpointer(..., extras={name: object})` names objects whose state belongs with the model's.
Each object has a *kind*, decided once at construction from what the object is:

| kind | objects | saved as |
|---|---|---|
| `nnx` | an `nnx.Module` (or other NNX graph object), `nnx.State`, `nnx.Variable` | arrays |
| `pytree` | dicts and lists of arrays (jax or NumPy) | arrays |
| `grain` | a Grain iterator (of a `grain.DataLoader`, `MapDataset` or `IterDataset`) | JSON |
| `stateful` | any other object with `get_state()` and `set_state(state)` | JSON |
| `json` | a dict of JSON values (str, int, float, bool, None, lists, dicts) | JSON |
| `numpy_rng` | a `numpy.random.Generator` (its bit generator's state) | JSON |

Array kinds become leaves `extras/<name>/...` of the step's array item, so they share the
model's restore plan (partial restores, renames, casts, re-sharding) and its checksums: the
live leaves are handed to the Checkpointer by `variables()`, as `nnx.Variable`s or `_Slot`s
(a dict or list entry, replaced on restore). The other kinds are captured by `capture()` as
plain JSON values (bytes, tuples, NumPy arrays and dicts with non-string keys are tagged, see
`encode`) and written in the step's small JSON item; integers stay exact (a PCG64 state's
128-bit integers included), since Python's `json` writes and reads integers of any size.

`plan()` matches what was passed against the step's record (`manifest`): each extra is
restored, `absent` (not in the checkpoint; it keeps its state) or `unused` (in the
checkpoint, not passed). Kinds that cannot take each other's state (a JSON config saved, a
Generator passed) are refused before anything is changed. No Orbax here.
"""

from __future__ import annotations

import base64
import dataclasses
import keyword
import logging
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from ._errors import CorruptCheckpointError, InvalidArgumentError, RestoreMismatchError

logger = logging.getLogger("roxxel")

ROOT = "extras"
"""The first component of every array leaf of an extra: `extras/<name>/...`."""

NNX = "nnx"
PYTREE = "pytree"
GRAIN = "grain"
STATEFUL = "stateful"
JSON = "json"
NUMPY_RNG = "numpy_rng"
ARRAY_KINDS = frozenset({NNX, PYTREE})
KIND_TEXT = {
    NNX: "NNX module or state",
    PYTREE: "pytree of arrays",
    GRAIN: "Grain iterator",
    STATEFUL: "object with get_state()/set_state()",
    JSON: "JSON config",
    NUMPY_RNG: "numpy.random.Generator",
}
# Kinds that can take each other's saved state.
_FAMILY = {NNX: "arrays", PYTREE: "arrays", GRAIN: "state", STATEFUL: "state"}

RESTORED = "restored"
ABSENT = "absent"
UNUSED = "unused"

SUPPORTED = (
    "an nnx.Module, nnx.State or nnx.Variable (EMA weights); a dict or list of arrays; a Grain "
    "iterator or any object with get_state() and set_state(state); a dict of JSON values (a "
    "config); a numpy.random.Generator"
)
_TAG = "__roxxel__"
_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic)
_JSON_SCALARS = (str, bool, int, float, type(None))


@dataclasses.dataclass(frozen=True)
class Extra:
    """One validated extra: its name, its kind and the live object."""

    name: str
    kind: str
    obj: Any


class _Slot:
    """A leaf of a pytree of arrays, seen as a Variable: the entry `container[key]`.

    Restoring replaces the entry (jax arrays cannot change in place), so the caller keeps
    using the dict or list it passed.
    """

    def __init__(self, container: Any, key: Any) -> None:
        self.container = container
        self.key = key

    def get_value(self) -> Any:
        return self.container[self.key]

    get_raw_value = get_value

    def set_value(self, value: Any) -> None:
        self.container[self.key] = value


def _invalid(name: str, problem: str, value: object) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"extras[{name!r}]: {problem}", name=f"extras[{name!r}]", value=value
    )


def _has_arrays(node: Any, depth: int = 0) -> bool:
    """True when a dict/list tree holds an array, an nnx.Variable or an NNX object."""
    if depth > 100:
        return False
    if isinstance(node, (nnx.Variable, nnx.Pytree, *_ARRAY_TYPES)):
        return True
    if isinstance(node, Mapping):
        return any(_has_arrays(child, depth + 1) for child in node.values())
    if isinstance(node, list):
        return any(_has_arrays(child, depth + 1) for child in node)
    return False


def kind_of(name: str, obj: Any) -> str:
    """The kind of `obj`; raises `InvalidArgumentError` naming `name` for anything else."""
    if isinstance(obj, (nnx.Variable, nnx.Pytree, nnx.State)):
        return NNX
    if isinstance(obj, np.random.Generator):
        return NUMPY_RNG
    if callable(getattr(obj, "get_state", None)) and callable(getattr(obj, "set_state", None)):
        return GRAIN if type(obj).__module__.split(".")[0] == "grain" else STATEFUL
    if isinstance(obj, (Mapping, list)) and _has_arrays(obj):
        return PYTREE
    if isinstance(obj, Mapping):
        return JSON
    if isinstance(obj, _ARRAY_TYPES):
        hint = "put it in a dict ({'w': array}) or an nnx.Variable, so restore() can replace it"
    elif hasattr(obj, "__iter__") and hasattr(obj, "__next__"):
        hint = "this iterator has no get_state()/set_state(); make it a Grain iterator"
    else:
        hint = "wrap its state in one of these, or give it get_state() and set_state(state)"
    raise _invalid(
        name,
        f"a {type(obj).__module__}.{type(obj).__qualname__} cannot be checkpointed. Supported: "
        f"{SUPPORTED}. To fix: {hint}.",
        obj,
    )


def check(
    extras: object,
    model: Any,
    optimizer: Any,
    *,
    process_count: int = 1,
) -> dict[str, Extra]:
    """Validate `Checkpointer(extras=...)`: names, kinds, and that nothing is saved twice.

    Raises:
        InvalidArgumentError: `extras` is not a mapping; a name is not a simple identifier; an
            object is of no supported kind, holds values JSON cannot keep, or shares state with
            the model, the optimizer or another extra; a per-process state (iterator, RNG) in
            a job of several processes.
    """
    if extras is None:
        return {}
    if not isinstance(extras, Mapping):
        raise InvalidArgumentError(
            f"extras must map names to objects, e.g. extras={{'data': train_iter, 'ema': "
            f"ema_model}}, got a {type(extras).__name__}.",
            name="extras",
            value=extras,
        )
    result: dict[str, Extra] = {}
    seen: dict[int, str] = {id(model): "the model"}
    if optimizer is not None:
        seen[id(optimizer)] = "the optimizer"
    owners = _variable_owners(model, optimizer)
    for name, obj in extras.items():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise InvalidArgumentError(
                f"extras name {name!r} is not a simple identifier: use letters, digits and "
                "underscores, not starting with a digit (e.g. 'data', 'ema', 'train_rng'). The "
                "name becomes the path extras/<name> in the checkpoint.",
                name="extras",
                value=name,
            )
        if id(obj) in seen:
            raise _invalid(
                name,
                f"is the same object as {seen[id(obj)]}, which is already saved. Pass each "
                "object once.",
                obj,
            )
        seen[id(obj)] = f"extras[{name!r}]"
        kind = kind_of(name, obj)
        if kind in (GRAIN, STATEFUL, NUMPY_RNG) and process_count > 1:
            raise _invalid(
                name,
                f"a {KIND_TEXT[kind]} holds one process's state, and this job has "
                f"{process_count} JAX processes; Roxxel saves such extras only in "
                "single-process jobs so far. To fix: leave it out of extras and rebuild it "
                "from the restored step (e.g. seed it with the step).",
                obj,
            )
        extra = Extra(name, kind, obj)
        if kind == JSON:
            encode(dict(obj), f"extras[{name!r}]")  # refuse what JSON cannot keep, now
            if not isinstance(obj, MutableMapping):
                raise _invalid(
                    name,
                    f"a {type(obj).__name__} cannot be updated in place by restore(); pass a dict.",
                    obj,
                )
        if kind in ARRAY_KINDS:
            for path, variable in _leaves(extra).items():
                owner = owners.setdefault(id(variable), path)
                if owner != path:
                    raise _invalid(
                        name,
                        f"its leaf {path} is the same nnx.Variable as {owner}, which is "
                        "saved already. Pass an independent copy (e.g. nnx.clone(model)) for "
                        "EMA weights, or leave this extra out.",
                        obj,
                    )
        result[name] = extra
    return result


def _variable_owners(model: Any, optimizer: Any) -> dict[int, str]:
    owners: dict[int, str] = {}
    for root, obj in (("model", model), ("optimizer", optimizer)):
        if obj is None:
            continue
        for path, node in nnx.iter_graph(obj):
            if isinstance(node, nnx.Variable):
                owners.setdefault(id(node), "/".join((root, *map(str, path))))
    return owners


def _component(name: str, key: Any, where: str) -> str:
    text = str(key)
    if not text or "/" in text:
        raise _invalid(
            name,
            f"the key {key!r} at {where} cannot be a path component (empty or holding '/'); "
            "rename it.",
            key,
        )
    return text


def _leaves(extra: Extra) -> dict[str, Any]:
    """The live leaves of an array extra: path -> nnx.Variable or `_Slot`."""
    found: dict[str, Any] = {}

    def walk(path: str, node: Any, parent: Any, key: Any) -> None:
        if node is None:  # an empty subtree, as in JAX
            return
        if isinstance(node, nnx.Variable):
            found[path] = node
        elif isinstance(node, nnx.Pytree):
            for sub, child in nnx.iter_graph(node):
                if isinstance(child, nnx.Variable) and _value(child) is not None:
                    found["/".join((path, *map(str, sub)))] = child
        elif isinstance(node, Mapping):
            for child_key, child in node.items():
                walk(f"{path}/{_component(extra.name, child_key, path)}", child, node, child_key)
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(f"{path}/{index}", child, node, index)
        elif isinstance(node, (*_ARRAY_TYPES, *_JSON_SCALARS)):
            if parent is None or not isinstance(parent, (MutableMapping, list)):
                raise _invalid(
                    extra.name,
                    f"the leaf {path} sits in a {type(parent).__name__}, which restore() "
                    "cannot update in place; use dicts and lists.",
                    extra.obj,
                )
            found[path] = _Slot(parent, key)
        else:
            raise _invalid(
                extra.name,
                f"the leaf {path} is a {type(node).__name__}; a pytree extra holds arrays, "
                "numbers and strings in dicts and lists (tuples cannot be updated in place: "
                "use lists).",
                extra.obj,
            )

    walk(f"{ROOT}/{extra.name}", extra.obj, None, None)
    return found


def _value(variable: nnx.Variable[Any]) -> Any:
    raw = variable.get_raw_value()
    return raw if isinstance(raw, (jax.Array, np.ndarray)) else variable.get_value()


def variables(extras: Mapping[str, Extra]) -> dict[str, Any]:
    """The live leaves of every array extra, keyed `extras/<name>/...`.

    Each has `get_value()`, `get_raw_value()` and `set_value()`, as an `nnx.Variable` does, so
    the Checkpointer snapshots and restores them with the model's leaves.
    """
    result: dict[str, Any] = {}
    for extra in extras.values():
        if extra.kind in ARRAY_KINDS:
            result.update(_leaves(extra))
    return result


def manifest(extras: Mapping[str, Extra]) -> dict[str, str]:
    """`{name: kind}`: the record of a step's extras, kept in its metadata."""
    return {name: extra.kind for name, extra in extras.items()}


# ----------------------------------------------------------------------------- capture
def capture(extras: Mapping[str, Extra]) -> dict[str, Any]:
    """The state of every non-array extra now, as JSON values: a copy, taken at call time.

    Raises:
        InvalidArgumentError: a `get_state()` returned something JSON cannot keep, or a
            config now holds such a value (the message names the extra and where).
    """
    states: dict[str, Any] = {}
    for name, extra in extras.items():
        where = f"extras[{name!r}]"
        if extra.kind == JSON:
            states[name] = encode(dict(extra.obj), where)
        elif extra.kind == NUMPY_RNG:
            states[name] = encode(extra.obj.bit_generator.state, f"{where}.bit_generator.state")
        elif extra.kind in (GRAIN, STATEFUL):
            states[name] = encode(extra.obj.get_state(), f"{where}.get_state()")
    return states


def encode(value: Any, where: str) -> Any:
    """`value` as JSON values, exactly: tuples, bytes, NumPy values and dicts with keys other
    than strings become tagged objects (`{"__roxxel__": kind, ...}`) that `decode` reverses.

    Raises:
        InvalidArgumentError: a value of another type (named with its place in `value`).
    """
    if isinstance(value, _JSON_SCALARS):
        return value
    if isinstance(value, list):
        return [encode(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, tuple):
        return {_TAG: "tuple", "items": [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, (bytes, bytearray)):
        try:
            return {_TAG: "bytes", "text": bytes(value).decode("utf-8")}
        except UnicodeDecodeError:
            return {_TAG: "bytes", "base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind in "biufc":
        array = np.array(value, order="C")
        return {
            _TAG: "numpy",
            "dtype": array.dtype.str,
            "shape": list(array.shape),
            "scalar": isinstance(value, np.generic),
            "base64": base64.b64encode(array.tobytes()).decode("ascii"),
        }
    if isinstance(value, Mapping):
        if all(isinstance(k, str) for k in value) and _TAG not in value:
            return {k: encode(v, f"{where}[{k!r}]") for k, v in value.items()}
        return {
            _TAG: "dict",
            "items": [
                [encode(k, f"{where} key {k!r}"), encode(v, f"{where}[{k!r}]")]
                for k, v in value.items()
            ],
        }
    raise InvalidArgumentError(
        f"{where} holds a {type(value).__module__}.{type(value).__qualname__} ({value!r:.80}), "
        "which cannot be saved as JSON. Extras keep str, int, float, bool, None, lists, tuples, "
        "dicts, bytes and NumPy numbers or arrays. To fix: convert it to one of these (a "
        "get_state() can return a dict of them).",
        name=where,
        value=value,
    )


def decode(value: Any) -> Any:
    """The inverse of `encode`."""
    if isinstance(value, list):
        return [decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    tag = value.get(_TAG)
    if tag is None:
        return {k: decode(v) for k, v in value.items()}
    if tag == "tuple":
        return tuple(decode(v) for v in value["items"])
    if tag == "bytes":
        if "text" in value:
            return value["text"].encode("utf-8")
        return base64.b64decode(value["base64"])
    if tag == "numpy":
        array = np.frombuffer(base64.b64decode(value["base64"]), dtype=np.dtype(value["dtype"]))
        array = array.reshape(value["shape"]).copy()
        return array[()] if value["scalar"] else array
    if tag == "dict":
        return {_hashable(decode(k)): decode(v) for k, v in value["items"]}
    raise ValueError(f"unknown tag {tag!r} in a saved extra")


def decode_saved(value: Any, *, step: int, name: str, path: str) -> Any:
    """`decode` of a state read from disk; malformed content raises `CorruptCheckpointError`."""
    try:
        return decode(value)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        why = f"{type(exc).__name__}: {exc}"
        problem = f"extras/metadata: the state of {name!r} is malformed ({why})"
        raise CorruptCheckpointError(
            f"step {step} in {path} cannot be restored: {problem}. Nothing was changed. To fix: "
            "restore another step with restore(step=N), or run `roxxel verify` on the "
            "directory.",
            step=step,
            path=path,
            problems=(problem,),
        ) from exc


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


# ----------------------------------------------------------------------------- restore
@dataclasses.dataclass
class ExtrasPlan:
    """What a restore does with the extras: the outcome per name and the states to set."""

    outcome: dict[str, str]
    states: dict[str, Any]  # name -> decoded state, for the non-array extras to restore
    extras: Mapping[str, Extra]

    def apply(self) -> None:
        """Set every planned non-array state; if one fails, put back those already set."""
        done: list[tuple[Extra, Any]] = []
        try:
            for name, state in self.states.items():
                extra = self.extras[name]
                done.append((extra, _current(extra)))
                _set(extra, state)
        except Exception:
            for extra, previous in reversed(done):
                try:
                    _set(extra, previous)
                except Exception:  # the first error is the one raised
                    logger.warning(
                        "roxxel: could not put back the state of extras[%r] after a failed restore",
                        extra.name,
                        exc_info=True,
                    )
            raise


def _current(extra: Extra) -> Any:
    if extra.kind == JSON:
        return dict(extra.obj)
    if extra.kind == NUMPY_RNG:
        return extra.obj.bit_generator.state
    return extra.obj.get_state()


def _set(extra: Extra, state: Any) -> None:
    if extra.kind == JSON:
        extra.obj.clear()
        extra.obj.update(state)
    elif extra.kind == NUMPY_RNG:
        extra.obj.bit_generator.state = state
    else:
        extra.obj.set_state(state)


def plan(
    step: int,
    extras: Mapping[str, Extra],
    saved: Mapping[str, str],
    load_states: Callable[[], Mapping[str, Any]],
    *,
    path: str,
) -> ExtrasPlan:
    """Match the extras passed now against the step's record `saved` (`{name: kind}`).

    `load_states` reads the step's JSON states; it is called only when one is needed. `path`
    (the step's folder) is named in errors.

    Raises:
        RestoreMismatchError: an extra's saved kind cannot be restored into its current
            object, or a Generator of another bit generator (nothing is changed).
    """
    outcome: dict[str, str] = {}
    wanted: list[str] = []
    for name, extra in extras.items():
        if name not in saved:
            outcome[name] = ABSENT
            continue
        saved_kind = saved[name]
        if _FAMILY.get(saved_kind, saved_kind) != _FAMILY.get(extra.kind, extra.kind):
            raise RestoreMismatchError(
                f"cannot restore step {step}: extras[{name!r}] was saved as a "
                f"{KIND_TEXT.get(saved_kind, saved_kind)} and is now a "
                f"{KIND_TEXT[extra.kind]}. Nothing was changed. To fix: pass the same kind of "
                "object under this name, or another name for the new one (the saved state "
                "is then reported unused).",
                mismatched={},
                report=None,
            )
        outcome[name] = RESTORED
        if extra.kind not in ARRAY_KINDS:
            wanted.append(name)
    for name in saved:
        if name not in extras:
            outcome[name] = UNUSED
    states: dict[str, Any] = {}
    if wanted:
        loaded = load_states()
        for name in wanted:
            if name not in loaded:
                raise RestoreMismatchError(
                    f"cannot restore step {step}: its record lists extras[{name!r}] but its "
                    "state is not in the step's extras file. Nothing was changed. To fix: "
                    "restore another step, or run `roxxel verify` on the directory.",
                    mismatched={},
                    report=None,
                )
            states[name] = decode_saved(loaded[name], step=step, name=name, path=path)
        for name in wanted:
            _check_rng(step, extras[name], states[name])
    return ExtrasPlan(outcome=outcome, states=states, extras=extras)


def _check_rng(step: int, extra: Extra, state: Any) -> None:
    if extra.kind != NUMPY_RNG:
        return
    current = type(extra.obj.bit_generator).__name__
    saved = state.get("bit_generator") if isinstance(state, Mapping) else None
    if saved != current:
        raise RestoreMismatchError(
            f"cannot restore step {step}: extras[{extra.name!r}] was saved from a Generator "
            f"on {saved} and is now one on {current}. Nothing was changed. To fix: create it "
            f"with the same bit generator (np.random.Generator(np.random.{saved}(...))).",
            mismatched={},
            report=None,
        )


def describe(kind: str) -> str:
    """Words for a kind (`JSON config`); the kind itself when unknown."""
    return KIND_TEXT.get(kind, kind)
