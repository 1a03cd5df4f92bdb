"""The tensor codecs: JSON, typed gRPC contents and raw bytes, and their error messages."""

from __future__ import annotations

import numpy as np
import pytest

from clawdbot_runtime.errors import InvalidInput
from clawdbot_runtime.tensors import decode_contents, decode_json, decode_raw, encode_raw


def test_json_accepts_flat_and_nested_data() -> None:
    flat = decode_json("x", "INT32", [2, 2], [1, 2, 3, 4])
    nested = decode_json("x", "INT32", [2, 2], [[1, 2], [3, 4]])
    assert flat.dtype == np.int32
    np.testing.assert_array_equal(flat, nested)


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "message"),
    [
        ("FP32", [2], [1.0], "shape [2] needs 2 elements, got 1"),
        ("INT8", [1], [300], "value out of range for INT8"),
        ("INT64", [1], [1.5], "INT64 data must be integers"),
        ("FP32", [1], ["a"], "FP32 data must be numbers, got str"),
        ("BOOL", [1], [1], "BOOL data must be true/false"),
        ("FP99", [1], [1], "unknown datatype 'FP99'"),
        ("FP32", [-1], [], "must hold non-negative integers"),
    ],
)
def test_json_errors_name_the_tensor_and_the_problem(
    datatype: str, shape: list[int], data: list[object], message: str
) -> None:
    with pytest.raises(InvalidInput) as error:
        decode_json("t", datatype, shape, data)
    assert "input 't'" in error.value.message
    assert message in error.value.message


def test_raw_round_trip_including_bytes() -> None:
    numbers = np.array([[1.5, -2.0]], dtype=np.float16)
    np.testing.assert_array_equal(decode_raw("n", "FP16", [1, 2], encode_raw(numbers)), numbers)
    words = np.array([b"ab", b"", "\u00e9".encode()], dtype=object)
    assert list(decode_raw("w", "BYTES", [3], encode_raw(words))) == list(words)


def test_raw_bytes_with_a_bad_length_prefix() -> None:
    with pytest.raises(InvalidInput, match="overruns the buffer"):
        decode_raw("w", "BYTES", [1], b"\x09\x00\x00\x00abc")


def test_typed_contents_are_range_checked() -> None:
    assert decode_contents("u", "UINT8", [2], [0, 255]).dtype == np.uint8
    with pytest.raises(InvalidInput, match="out of range for UINT8"):
        decode_contents("u", "UINT8", [1], [256])
