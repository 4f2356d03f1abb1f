"""`load_weights`: a safetensors file into a live NNX model, the way `restore()` does it.

The file is read in its documented format (an 8-byte little-endian header size, a JSON header
of `key: {dtype, shape, data_offsets}` and `__metadata__`, then the tensors' bytes), the way
`_export` writes it: the header is checked whole before anything else is read (a file that is
not safetensors, one cut short, an unknown dtype or a key used twice is refused, naming the
file and what to do), then only the tensors the plan needs are read, four at a time.

Keys become leaf paths: a key that starts with `model/` or `optimizer/` (what `roxxel export`
writes) is the path as is; any other key gets `model/` in front, with its dots read as path
separators when it has no slash (`encoder.layers.0.weight`, as PyTorch and Hugging Face name
them, is `model/encoder/layers/0/weight`). From there `_inplace` plans and applies exactly as
for a checkpoint step: renames and their suggestions, casts to the current dtype, shapes that
do not fit, the current sharding of every array, all or nothing. The optimizer is never
touched; `optimizer/...` keys in the file are reported unused.

PRNG keys are stored as their key data; `roxxel export` records each one's implementation in
the file's metadata (`roxxel_keys`), so they come back as keys. `roxxel_step` there becomes
the report's step.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from . import _export, _format, _inplace, _paths, _restore, _state, _validate
from ._errors import InvalidArgumentError, WeightsFileError
from ._restore import OnMismatch, RestoreReport

logger = logging.getLogger("roxxel")

HEADER_LIMIT = 100_000_000
"""The largest header accepted, in bytes: the reference reader's limit (it refuses one more)."""
_ROOTS = ("model/", "optimizer/")


def leaf_path(key: str) -> str:
    """The leaf path a key of the file is planned under (see the module docstring)."""
    if key.startswith(_ROOTS):
        return key
    parts = key.split("/") if "/" in key else key.split(".")
    return "/".join(["model", *(part for part in parts if part)])


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """One tensor of the file: its key, what its bytes hold and where they are."""

    key: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    begin: int
    end: int


class WeightsFile:
    """The checked header of a safetensors file: its tensors by leaf path, and their specs.

    The file stays open from the header's check to `close()`, so the tensors are read from the
    file whose header was checked, even if another file is renamed over its path meanwhile.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.tensors: dict[str, _Tensor] = {}
        self.specs: dict[str, _state.LeafSpec] = {}
        self.metadata: dict[str, str] = {}
        try:
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise self._refuse(
                f"it cannot be opened ({exc.strerror or exc})",
                "check that the file exists and is readable",
            ) from exc
        try:
            self._parse()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the file (reading afterwards raises)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> WeightsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------- checking
    def _refuse(self, problem: str, fix: str) -> WeightsFileError:
        return WeightsFileError(
            f"cannot load weights from {self.path}: {problem}. Nothing was changed. To fix: {fix}.",
            path=self.path,
            problem=problem,
        )

    def _not_safetensors(self, why: str) -> WeightsFileError:
        return self._refuse(
            f"it is not a safetensors file ({why})",
            "pass a .safetensors file (`roxxel export DIR OUT.safetensors` writes one from a "
            "checkpoint; a checkpoint folder itself is restored with Checkpointer.restore())",
        )

    def _parse(self) -> None:
        try:
            size = os.fstat(self._fd).st_size
            head = os.pread(self._fd, 8, 0)
            if len(head) < 8:
                raise self._not_safetensors(f"{size} bytes, shorter than a header")
            length = int.from_bytes(head, "little")
            if length < 2 or length > HEADER_LIMIT:
                raise self._not_safetensors(f"its first 8 bytes give a header of {length} bytes")
            if 8 + length > size:
                raise self._truncated(
                    f"its header needs {8 + length} bytes but the file has {size}"
                )
            raw = os.pread(self._fd, length, 8)
            if len(raw) < length:
                raise self._truncated(f"its header needs {8 + length} bytes but fewer were read")
        except OSError as exc:
            raise self._refuse(
                f"it cannot be read ({exc.strerror or exc})",
                "check that the file exists and is readable",
            ) from exc
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._not_safetensors(f"its header is not JSON: {exc}") from None
        if not isinstance(header, dict):
            raise self._not_safetensors("its header is not a JSON object")
        self._parse_metadata(header.pop("__metadata__", {}))
        data_size = size - 8 - length
        keys = self._key_impls()
        for key, entry in header.items():
            tensor = self._parse_tensor(key, entry, data_size, base=8 + length)
            path = leaf_path(key)
            if path in self.tensors:
                raise self._refuse(
                    f"the keys {self.tensors[path].key!r} and {key!r} both name the leaf {path}",
                    "rename one of them in the file",
                )
            self.tensors[path] = tensor
            self.specs[path] = _state.LeafSpec(tensor.shape, tensor.dtype.name, keys.get(path))

    def _truncated(self, what: str) -> WeightsFileError:
        return self._refuse(
            f"{what}: the file was cut short (an interrupted download, copy or export)",
            "download or export it again",
        )

    def _parse_metadata(self, metadata: object) -> None:
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise self._not_safetensors("its __metadata__ is not a map of strings to strings")
        self.metadata = metadata

    def _key_impls(self) -> dict[str, str]:
        text = self.metadata.get("roxxel_keys")
        if text is None:
            return {}
        try:
            impls = json.loads(text)
        except json.JSONDecodeError:
            impls = None
        if not isinstance(impls, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in impls.items()
        ):
            raise self._refuse(
                "its roxxel_keys metadata (the PRNG key implementations) is damaged",
                "export the checkpoint again",
            )
        return impls

    def _parse_tensor(self, key: str, entry: object, data_size: int, *, base: int) -> _Tensor:
        if not isinstance(entry, dict):
            raise self._not_safetensors(f"the header entry of {key!r} is not an object")
        code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not (
            isinstance(shape, list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            and isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        ):
            raise self._not_safetensors(f"the shape or data_offsets of {key!r} are malformed")
        name = _export.SAFETENSORS_NAMES.get(code) if isinstance(code, str) else None
        if name is None:
            raise self._refuse(
                f"tensor {key!r} has dtype {code!r}, which Roxxel does not read (it reads "
                f"{', '.join(sorted(_export.SAFETENSORS_NAMES))})",
                "convert that tensor to one of these (e.g. F32) when writing the file, or "
                "leave it out",
            )
        dtype = _format._np_dtype(name)
        begin, end = offsets
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise self._not_safetensors(
                f"tensor {key!r} of shape {tuple(shape)} {name} spans bytes {begin}..{end}, not "
                f"{math.prod(shape) * dtype.itemsize} bytes"
            )
        if end > data_size:
            raise self._truncated(
                f"tensor {key!r} ends at byte {base + end} but the file has {base + data_size}"
            )
        return _Tensor(key, dtype, tuple(shape), base + begin, base + end)

    def step(self) -> int:
        """The `roxxel_step` an exported file records, or 0."""
        text = self.metadata.get("roxxel_step", "")
        return int(text) if text.isdigit() else 0

    # -------------------------------------------------------------------- reading
    def read(self, targets: Mapping[str, Any]) -> dict[str, Any]:
        """Read the tensors named in `targets` (leaf paths), placed as `Store.read` does."""
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=_format.READERS, thread_name_prefix="roxxel-weights"
        ) as pool:
            futures = {path: pool.submit(self._read_one, self._fd, path) for path in targets}
            result = {}
            for path, target in targets.items():
                tensor = self.tensors[path]
                array = futures[path].result()
                leaf = _format.SavedLeaf(tensor.dtype.name, tensor.shape)
                wanted = _format.Target(
                    getattr(target, "dtype", None), getattr(target, "sharding", None)
                )
                result[path] = _format.place(path, leaf, wanted, _piece(array))
            return result

    def _read_one(self, fd: int, path: str) -> np.ndarray[Any, Any]:
        tensor = self.tensors[path]
        length = tensor.end - tensor.begin
        buffer = _format.aligned_empty(length)
        view = memoryview(buffer)  # type: ignore[arg-type]  # NumPy has the buffer protocol
        done = 0
        while done < length:
            n = os.preadv(fd, [view[done:]], tensor.begin + done)
            if n == 0:
                raise self._truncated(
                    f"tensor {tensor.key!r} ends at byte {tensor.end} but the file ends at "
                    f"{tensor.begin + done} (it changed after its header was read)"
                )
            done += n
        array: np.ndarray[Any, Any] = buffer.view(tensor.dtype).reshape(tensor.shape)
        return array


def _piece(array: np.ndarray[Any, Any]) -> Any:
    def piece(region: tuple[tuple[int, int], ...]) -> np.ndarray[Any, Any]:
        return array[tuple(slice(a, b) for a, b in region)]

    return piece


def _checked_path(path: object) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentError(
            f"path must be the path of a .safetensors file, got {path!r} "
            f"(type {type(path).__name__}).",
            name="path",
            value=path,
        )
    text = os.fspath(path)
    if not isinstance(text, str):
        text = os.fsdecode(text)
    if _paths.is_url(text):
        raise InvalidArgumentError(
            f"load_weights reads a local file, got the URL {text!r}. Copy the file to a local "
            "disk first (e.g. with gsutil cp or aws s3 cp).",
            name="path",
            value=path,
        )
    full = os.path.abspath(os.path.expanduser(text))
    if os.path.isdir(full):
        raise InvalidArgumentError(
            f"{full} is a folder; load_weights reads one .safetensors file. A Roxxel checkpoint "
            "folder is restored with Checkpointer(...).restore(), or exported to a file with "
            "`roxxel export`.",
            name="path",
            value=path,
        )
    if not os.path.exists(full):
        raise InvalidArgumentError(
            f"{full} does not exist. Pass the path of a .safetensors file (`roxxel export DIR "
            "OUT.safetensors` writes one from a checkpoint).",
            name="path",
            value=path,
        )
    return full


def load_weights(
    model: nnx.Module,
    path: str | os.PathLike[str],
    *,
    rename: Mapping[str, str] | None = None,
    on_mismatch: OnMismatch = "error",
    allow_partial: bool = False,
) -> RestoreReport:
    """Load the arrays of a safetensors file into `model` in place, as `restore()` would.

    The file may be one `roxxel export` wrote (its keys are the model's leaf paths, so it
    loads into the same model with no rename) or one from elsewhere. Every key becomes a leaf
    path: `model/...` keys as they are; any other key gets `model/` in front, and a key with
    no slash is split at its dots, so `encoder.layers.0.kernel` is
    `model/encoder/layers/0/kernel`. Then the planning of `Checkpointer.restore()` applies:
    leaves that fit are read (into the current dtype and sharding of each array); leaves the
    file lacks keep their values; renames are suggested, never applied on their own; either
    every planned leaf is set or, on any error, none is. Only the tensors the plan needs are
    read from the file. The summary of the report is logged (a warning unless it was exact).

    Args:
        model: the `nnx.Module` to load into.
        path: a local `.safetensors` file.
        rename: `{current name: name in the file}`, names as leaf paths (see above): with the
            file's `encoder.layer.0.weight` for the model's `encoder/layers/0/kernel`, pass
            `{"layers": "layer", "kernel": "weight"}`. As for `restore()`, a name renames that
            path component everywhere, a path (`{"model/enc": "model/encoder"}`) one place.
        on_mismatch: "error" (default) refuses leaves whose shape differs and leaves the model
            untouched; "skip" loads the rest and keeps those at their values.
        allow_partial: load what matches even when none of the model's parameters does.

    Returns:
        The `RestoreReport` (`applied` is True; `source` is the file; `step` is the step an
        exported file came from, 0 for other files).

    Raises:
        InvalidArgumentError: a bad argument (not a module, no such file, a folder, a URL, a
            malformed `rename`, a `rename` key that names nothing in the model).
        WeightsFileError: the file is not a safetensors file, was cut short, holds a dtype
            Roxxel does not read, or two of its keys name the same leaf.
        RestoreMismatchError: a shape differs and `on_mismatch="error"`; or none of the
            model's parameters is in the file and `allow_partial` is False (the message gives
            the `rename=` when the paths only moved). Nothing was changed.

    Example:
        ```python norun
        model = Net(nnx.Rngs(0))
        report = load_weights(model, "weights.safetensors")
        print(report.summary())
        ```
    """
    _validate.instance(
        model,
        nnx.Module,
        name="model",
        hint="Pass the flax.nnx.Module to load the weights into.",
    )
    full = _checked_path(path)
    _inplace.check_options(on_mismatch, allow_partial)
    renames = _restore.check_rename(rename)
    with WeightsFile(full) as weights:
        live = _state.variables(model, None)
        planned = _inplace.plan(
            live,
            weights.step(),
            weights.specs,
            rename=renames,
            on_mismatch=on_mismatch,
            allow_partial=allow_partial,
            where=full,
            source=full,
        )
        report = _inplace.apply(live, planned, weights.specs, weights.read)
    level = logging.INFO if report.exact and report.all_params_restored else logging.WARNING
    logger.log(level, "roxxel: loaded %s", report.summary())
    return report
