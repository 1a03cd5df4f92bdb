"""Tensor data types of the Open Inference Protocol and their wire encodings.

One table maps each protocol datatype to its numpy dtype and ONNX type; the codecs turn
JSON data, typed gRPC contents and raw little-endian bytes into numpy arrays and back.
Every decoding error is an :class:`InvalidInput` that names the tensor.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from clawdbot_runtime.errors import InvalidInput

Array = npt.NDArray[Any]

# Protocol datatype -> numpy dtype. BYTES travels as an object array of ``bytes``.
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

# onnxruntime's type strings (``NodeArg.type``) -> protocol datatype.
ONNX_TO_DATATYPE: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

_DTYPE_TO_DATATYPE = {dtype: name for name, dtype in NUMPY_DTYPES.items() if name != "BYTES"}


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the protocol describes it; -1 marks a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict[str, Any]:
        """The tensor's entry in a model metadata response."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def datatype_from_onnx(onnx_type: str) -> str:
    """Protocol datatype for an onnxruntime type string; ValueError if the protocol has none."""
    try:
        return ONNX_TO_DATATYPE[onnx_type]
    except KeyError:
        raise ValueError(f"ONNX type {onnx_type} has no Open Inference Protocol datatype") from None


def datatype_of(array: Array) -> str:
    """Protocol datatype of a numpy array (object and string arrays are BYTES)."""
    if array.dtype.kind in ("O", "U", "S"):
        return "BYTES"
    try:
        return _DTYPE_TO_DATATYPE[array.dtype]
    except KeyError:
        raise ValueError(f"numpy dtype {array.dtype} has no protocol datatype") from None


def check_shape(name: str, shape: Sequence[Any]) -> tuple[int, ...]:
    """Validate a request's shape field: a list of non-negative integers."""
    if not isinstance(shape, Sequence) or isinstance(shape, str | bytes):
        raise InvalidInput(f"input '{name}': shape must be a list of integers")
    dims: list[int] = []
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise InvalidInput(
                f"input '{name}': shape {list(shape)} must hold non-negative integers"
            )
        dims.append(dim)
    return tuple(dims)


def _check_datatype(name: str, datatype: Any) -> str:
    if not isinstance(datatype, str) or datatype not in NUMPY_DTYPES:
        raise InvalidInput(
            f"input '{name}': unknown datatype {datatype!r}; expected one of "
            + ", ".join(NUMPY_DTYPES)
        )
    return datatype


def _element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _to_bytes(name: str, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise InvalidInput(
        f"input '{name}': BYTES elements must be strings, got {type(value).__name__}"
    )


def _flatten(name: str, data: Any) -> list[Any]:
    """Flatten the nested-list form the JSON protocol allows into one row-major list."""
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        try:
            item = next(stack[-1])
        except StopIteration:
            stack.pop()
            continue
        if isinstance(item, list):
            stack.append(iter(item))
        elif isinstance(item, dict):
            raise InvalidInput(f"input '{name}': data must hold values, not objects")
        else:
            out.append(item)
    return out


def _cast_numbers(name: str, datatype: str, values: Array) -> Array:
    """Cast a numpy array inferred from request data to ``datatype``, refusing lossy casts."""
    target = NUMPY_DTYPES[datatype]
    kind = values.dtype.kind
    if values.size == 0:
        return values.astype(target)
    if datatype == "BOOL":
        if kind != "b":
            raise InvalidInput(f"input '{name}': BOOL data must be true/false values")
        return values
    if target.kind in ("i", "u"):
        if kind not in ("i", "u"):
            raise InvalidInput(f"input '{name}': {datatype} data must be integers")
        info = np.iinfo(target)
        low, high = int(values.min()), int(values.max())
        if low < info.min or high > info.max:
            raise InvalidInput(
                f"input '{name}': value out of range for {datatype} ({info.min}..{info.max})"
            )
        return values.astype(target)
    # Floating point targets take integers and floats, never booleans or strings.
    if kind not in ("i", "u", "f"):
        raise InvalidInput(f"input '{name}': {datatype} data must be numbers")
    return values.astype(target)


def decode_json(name: str, datatype: Any, shape: Any, data: Any) -> Array:
    """Decode one JSON input tensor (flat or nested ``data``) into a numpy array."""
    datatype = _check_datatype(name, datatype)
    dims = check_shape(name, shape)
    flat = _flatten(name, data)
    expected = _element_count(dims)
    if len(flat) != expected:
        raise InvalidInput(
            f"input '{name}': shape {list(dims)} needs {expected} elements, got {len(flat)}"
        )
    if datatype == "BYTES":
        array = np.empty(len(flat), dtype=object)
        for i, value in enumerate(flat):
            array[i] = _to_bytes(name, value)
        return array.reshape(dims)
    for value in flat:
        # A string or null mixed into numbers would make numpy build a str/object array and
        # lose the element's position; reject it with the tensor named.
        if not isinstance(value, bool | int | float):
            raise InvalidInput(
                f"input '{name}': {datatype} data must be numbers, got {type(value).__name__}"
            )
    try:
        values = np.asarray(flat)
    except (OverflowError, ValueError) as exc:
        raise InvalidInput(f"input '{name}': {exc}") from None
    if values.dtype == object:
        # Python ints beyond 64 bits end up as objects.
        raise InvalidInput(f"input '{name}': value out of range for {datatype}")
    return _cast_numbers(name, datatype, values).reshape(dims)


def encode_json(name: str, array: Array) -> dict[str, Any]:
    """Encode an output array as a JSON output tensor with flat row-major data."""
    datatype = datatype_of(array)
    if datatype == "BYTES":
        data: list[Any] = [
            v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)
            for v in array.ravel()
        ]
    else:
        data = array.ravel().tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


# Field of InferTensorContents that carries each datatype (FP16 has none: raw only).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def decode_contents(name: str, datatype: Any, shape: Sequence[int], values: Sequence[Any]) -> Array:
    """Decode typed gRPC contents (the repeated field for ``datatype``) into an array."""
    datatype = _check_datatype(name, datatype)
    dims = check_shape(name, list(shape))
    expected = _element_count(dims)
    if len(values) != expected:
        raise InvalidInput(
            f"input '{name}': shape {list(dims)} needs {expected} elements, got {len(values)}"
        )
    if datatype == "BYTES":
        array = np.empty(len(values), dtype=object)
        for i, value in enumerate(values):
            array[i] = bytes(value)
        return array.reshape(dims)
    wire = {
        "int_contents": np.int64,
        "uint_contents": np.uint64,
        "int64_contents": np.int64,
        "uint64_contents": np.uint64,
        "fp32_contents": np.float32,
        "fp64_contents": np.float64,
        "bool_contents": np.bool_,
    }[CONTENTS_FIELD[datatype]]
    return _cast_numbers(name, datatype, np.asarray(values, dtype=wire)).reshape(dims)


def decode_raw(name: str, datatype: Any, shape: Sequence[int], raw: bytes) -> Array:
    """Decode raw little-endian row-major bytes (BYTES: 4-byte length-prefixed) into an array."""
    datatype = _check_datatype(name, datatype)
    dims = check_shape(name, list(shape))
    expected = _element_count(dims)
    if datatype == "BYTES":
        items: list[bytes] = []
        offset = 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise InvalidInput(f"input '{name}': truncated length prefix in raw BYTES")
            (length,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + length > len(raw):
                raise InvalidInput(f"input '{name}': raw BYTES element overruns the buffer")
            items.append(raw[offset : offset + length])
            offset += length
        if len(items) != expected:
            raise InvalidInput(
                f"input '{name}': shape {list(dims)} needs {expected} elements, got {len(items)}"
            )
        array = np.empty(len(items), dtype=object)
        for i, item in enumerate(items):
            array[i] = item
        return array.reshape(dims)
    dtype = NUMPY_DTYPES[datatype].newbyteorder("<")
    if len(raw) != expected * dtype.itemsize:
        raise InvalidInput(
            f"input '{name}': shape {list(dims)} of {datatype} needs "
            f"{expected * dtype.itemsize} raw bytes, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).astype(NUMPY_DTYPES[datatype]).reshape(dims)


def encode_raw(array: Array) -> bytes:
    """Encode an array as raw protocol bytes (little-endian; BYTES length-prefixed)."""
    if datatype_of(array) == "BYTES":
        parts: list[bytes] = []
        for value in array.ravel():
            item = value if isinstance(value, bytes) else str(value).encode("utf-8")
            parts.append(struct.pack("<I", len(item)))
            parts.append(item)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
