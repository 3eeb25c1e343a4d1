"""Tensors <-> bytes (persisting/engine/codec.py): round trips, zero copy, checksums, bad input."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest

from persisting.engine import codec
from persisting.engine.codec import COMPRESSIONS, EncodedTensor, decode_tensor, encode_tensor
from persisting.errors import CorruptionError, InvalidRecordError, SchemaError

try:
    import torch
except ImportError:  # torch is an optional extra
    torch = None  # type: ignore[assignment]

requires_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")
HAS_ML_DTYPES = importlib.util.find_spec("ml_dtypes") is not None

NUMPY_DTYPES = [
    "bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
    "float16", "float32", "float64", "complex64", "complex128",
]
TORCH_DTYPE_NAMES = [
    "bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
    "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
    "float8_e4m3fn", "float8_e5m2",
]
if torch is not None:
    TORCH_DTYPES = [getattr(torch, n) for n in TORCH_DTYPE_NAMES if hasattr(torch, n)]
else:
    TORCH_DTYPES = []
SHAPES = [(2, 3, 4), (), (0,), (3, 0, 2), (7,)]


def _decode(enc: EncodedTensor, **kwargs: Any) -> Any:
    return decode_tensor(
        enc.data, dtype=enc.dtype, shape=enc.shape, checksum_=enc.checksum,
        compression=enc.compression, **kwargs,
    )


def _numpy_sample(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    n = int(np.prod(shape, dtype=np.int64))
    if dtype == "bool":
        flat = rng.integers(0, 2, n).astype(bool)
    elif dtype.startswith("complex"):
        flat = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(dtype)
    elif dtype.startswith("float"):
        flat = rng.standard_normal(n).astype(dtype)
    else:
        info = np.iinfo(dtype)
        flat = rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
    return flat.reshape(shape)


def _torch_sample(dtype: Any, shape: tuple[int, ...]) -> Any:
    gen = torch.Generator().manual_seed(0)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    if dtype.is_complex:
        return torch.randn(shape, generator=gen, dtype=dtype)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype)
    if dtype in (torch.uint16, torch.uint32, torch.uint64):
        return torch.randint(0, 1000, shape, generator=gen).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -(2**31)), min(info.max, 2**31 - 1), shape, generator=gen, dtype=dtype)


def _torch_equal(a: Any, b: Any) -> bool:
    """Bit-exact equality; float8 has no torch.equal kernel, so compare its bytes."""
    if a.dtype in {getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)}:
        return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))
    return torch.equal(a, b)


# -- numpy round trips -----------------------------------------------------------------------
@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
def test_numpy_round_trip(dtype: str, shape: tuple[int, ...], compression: str | None) -> None:
    a = _numpy_sample(dtype, shape)
    enc = encode_tensor(a, compression=compression)
    assert enc.dtype == dtype
    assert enc.shape == shape
    assert enc.compression == compression
    assert enc.raw_nbytes == a.nbytes
    assert enc.checksum == codec.checksum(enc.data)
    assert len(enc.checksum) == 16
    b = _decode(enc)
    assert isinstance(b, np.ndarray)
    assert b.dtype == a.dtype
    assert b.shape == a.shape
    np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_numpy_non_contiguous_round_trip(compression: str | None) -> None:
    base = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    for view in (base.T, base[:, ::2, 1:], base.transpose(1, 0, 2)[::-1]):
        assert not view.flags.c_contiguous
        enc = encode_tensor(view, compression=compression)
        out = _decode(enc)
        assert out.shape == view.shape
        np.testing.assert_array_equal(out, view)


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("dtype", [">i2", ">u4", ">i8", ">f4", ">f8", ">c8", ">c16"])
def test_big_endian_numpy_round_trips_as_little_endian(dtype: str, compression: str | None) -> None:
    a = (np.arange(12) * 3 + 1).astype(dtype).reshape(3, 4)
    a[1, 1] = 0
    enc = encode_tensor(a, compression=compression)
    native = np.dtype(dtype).newbyteorder("<")
    assert enc.dtype == native.name
    assert bytes(codec.decompress(enc.data, compression)) == a.astype(native).tobytes()
    out = _decode(enc)
    assert out.dtype == native
    np.testing.assert_array_equal(out, a)


def test_encode_does_not_mutate_the_callers_array() -> None:
    a = np.arange(6, dtype=">i4").reshape(2, 3)
    before = a.copy()
    encode_tensor(a.T, compression="zstd")
    assert a.dtype == np.dtype(">i4")
    np.testing.assert_array_equal(a, before)


# -- torch round trips -----------------------------------------------------------------------
@requires_torch
@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_torch_round_trip(dtype: Any, shape: tuple[int, ...], compression: str | None) -> None:
    t = _torch_sample(dtype, shape)
    enc = encode_tensor(t, compression=compression)
    assert enc.dtype == str(dtype).removeprefix("torch.")
    assert enc.shape == shape
    out = _decode(enc, framework="torch")
    assert isinstance(out, torch.Tensor)
    assert out.dtype == t.dtype
    assert out.shape == t.shape
    assert _torch_equal(out, t)


@requires_torch
@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_torch_non_contiguous_round_trip(dtype: Any, compression: str | None) -> None:
    base = _torch_sample(dtype, (4, 6))
    for view in (base.T, base[:, ::2], base.T[1:, :3]):
        assert not view.is_contiguous()
        out = _decode(encode_tensor(view, compression=compression), framework="torch")
        assert out.dtype == view.dtype
        assert out.shape == view.shape
        assert out.is_contiguous()
        assert _torch_equal(out, view)


@requires_torch
def test_torch_bfloat16_values_are_bit_exact() -> None:
    t = torch.tensor([1.0, -2.5, 3.140625, float("inf"), -0.0, 1e-38], dtype=torch.bfloat16)
    out = _decode(encode_tensor(t, compression="lz4"), framework="torch")
    assert out.dtype == torch.bfloat16
    assert torch.equal(out.view(torch.int16), t.view(torch.int16))


@requires_torch
def test_torch_requires_grad_tensor_is_encoded() -> None:
    t = torch.randn(3, 3, requires_grad=True)
    out = _decode(encode_tensor(t), framework="torch")
    assert torch.equal(out, t.detach())
    assert not out.requires_grad


@requires_torch
def test_numpy_in_torch_out_and_back() -> None:
    a = np.arange(12, dtype=np.int16).reshape(3, 4)
    t = _decode(encode_tensor(a), framework="torch")
    assert t.dtype == torch.int16
    assert torch.equal(t, torch.from_numpy(a))
    back = _decode(encode_tensor(t))
    np.testing.assert_array_equal(back, a)


@requires_torch
def test_torch_decode_copies_by_default() -> None:
    data = bytearray(np.arange(4, dtype=np.int32).tobytes())
    out = decode_tensor(data, dtype="int32", shape=(4,), framework="torch")
    data[0] = 99
    assert out.tolist() == [0, 1, 2, 3]


# -- zero copy -------------------------------------------------------------------------------
def test_uncompressed_numpy_encode_is_zero_copy() -> None:
    a = np.arange(1000, dtype=np.float32)
    enc = encode_tensor(a)
    assert isinstance(enc.data, memoryview)
    view = np.frombuffer(enc.data, dtype=np.uint8)
    assert np.shares_memory(view, a)
    assert view.ctypes.data == a.ctypes.data
    a[0] = 42.0  # the documented consequence: the payload is the caller's memory
    assert np.frombuffer(enc.data, dtype=np.float32)[0] == 42.0


@requires_torch
def test_uncompressed_torch_encode_is_zero_copy() -> None:
    for dtype in (torch.float32, torch.bfloat16, torch.int64):
        t = torch.arange(100).to(dtype)
        enc = encode_tensor(t)
        assert isinstance(enc.data, memoryview)
        assert np.frombuffer(enc.data, dtype=np.uint8).ctypes.data == t.data_ptr()


def test_compressed_encode_does_not_alias_the_array() -> None:
    a = np.zeros(1000, dtype=np.float32)
    enc = encode_tensor(a, compression="zstd")
    a[:] = 1.0
    np.testing.assert_array_equal(_decode(enc), np.zeros(1000, dtype=np.float32))


def test_decode_copy_false_is_a_read_only_view() -> None:
    payload = np.arange(8, dtype=np.int64).tobytes()
    out = decode_tensor(payload, dtype="int64", shape=(2, 4), copy=False)
    assert not out.flags.writeable
    np.testing.assert_array_equal(out, np.arange(8).reshape(2, 4))
    copied = decode_tensor(payload, dtype="int64", shape=(2, 4))
    assert copied.flags.writeable


# -- corruption ------------------------------------------------------------------------------
@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("position", [0, "middle", -1])
def test_flipped_byte_raises_corruption_error_naming_where(compression: str | None, position: int | str) -> None:
    a = np.arange(256, dtype=np.int32)
    enc = encode_tensor(a, compression=compression)
    corrupt = bytearray(enc.data)
    i = len(corrupt) // 2 if position == "middle" else int(position)
    corrupt[i] ^= 0x01
    where = "kv/ns/chunk-7"
    with pytest.raises(CorruptionError) as info:
        decode_tensor(
            bytes(corrupt), dtype=enc.dtype, shape=enc.shape, checksum_=enc.checksum,
            compression=compression, where=where,
        )
    assert where in str(info.value)
    assert info.value.where == where  # type: ignore[attr-defined]


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_wrong_checksum_is_never_served(compression: str | None) -> None:
    enc = encode_tensor(np.ones(16, dtype=np.float64), compression=compression)
    with pytest.raises(CorruptionError):
        decode_tensor(enc.data, dtype=enc.dtype, shape=enc.shape, checksum_=b"\0" * 16, compression=compression)


@pytest.mark.parametrize("delta", [-1, 1, -8])
def test_wrong_length_raises_corruption_error(delta: int) -> None:
    data = np.arange(8, dtype=np.float32).tobytes()
    data = data[:delta] if delta < 0 else data + b"\0" * delta
    with pytest.raises(CorruptionError) as info:
        decode_tensor(data, dtype="float32", shape=(8,), checksum_=codec.checksum(data), where="ckpt/w")
    assert "ckpt/w" in str(info.value)


@pytest.mark.parametrize("compression", [c for c in COMPRESSIONS if c is not None])
@pytest.mark.parametrize("shape", [(9,), (11,), (2, 5, 1, 2)], ids=str)
def test_compressed_payload_with_wrong_shape_raises_corruption_error(compression: str, shape: tuple[int, ...]) -> None:
    enc = encode_tensor(np.arange(10, dtype=np.int32), compression=compression)
    with pytest.raises(CorruptionError) as info:
        decode_tensor(enc.data, dtype="int32", shape=shape, checksum_=enc.checksum, compression=compression, where="w1")
    assert "w1" in str(info.value)


@pytest.mark.parametrize("compression", [c for c in COMPRESSIONS if c is not None])
def test_garbage_that_does_not_decompress_raises_corruption_error(compression: str) -> None:
    garbage = b"\xde\xad\xbe\xef" * 8
    with pytest.raises(CorruptionError) as info:
        decode_tensor(garbage, dtype="uint8", shape=(64,), compression=compression, where="blob 3")
    assert "blob 3" in str(info.value)


# -- refused input ---------------------------------------------------------------------------
@pytest.mark.skipif(HAS_ML_DTYPES, reason="ml_dtypes is installed, so numpy can hold these dtypes")
@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn", "float8_e5m2"])
def test_numpy_decode_of_dtype_without_numpy_equivalent_raises_schema_error(dtype: str) -> None:
    with pytest.raises(SchemaError) as info:
        decode_tensor(b"\0" * 4, dtype=dtype, shape=(4 // codec._ITEMSIZE[dtype],))
    assert dtype in str(info.value)
    assert "torch" in str(info.value)


@requires_torch
@pytest.mark.skipif(HAS_ML_DTYPES, reason="ml_dtypes is installed, so numpy can hold bfloat16")
def test_bfloat16_encoded_from_torch_decodes_to_numpy_only_with_ml_dtypes() -> None:
    enc = encode_tensor(torch.ones(4, dtype=torch.bfloat16))
    with pytest.raises(SchemaError):
        _decode(enc)
    assert torch.equal(_decode(enc, framework="torch"), torch.ones(4, dtype=torch.bfloat16))


@pytest.mark.parametrize("name", ["gzip", "ZSTD", "", "brotli"])
def test_encode_with_unsupported_compression_raises_schema_error(name: str) -> None:
    with pytest.raises(SchemaError) as info:
        encode_tensor(np.zeros(3), compression=name)
    assert repr(name) in str(info.value)
    with pytest.raises(SchemaError):
        codec.compress(b"abc", name)
    with pytest.raises(SchemaError):
        codec.decompress(b"abc", name)


def test_decode_with_unsupported_compression_raises_schema_error() -> None:
    with pytest.raises(SchemaError):
        decode_tensor(b"\0" * 8, dtype="float32", shape=(2,), compression="brotli")


def test_decode_of_unknown_stored_dtype_raises_schema_error() -> None:
    with pytest.raises(SchemaError) as info:
        decode_tensor(b"\0" * 8, dtype="float128", shape=(1,), where="p")
    assert "float128" in str(info.value)


@pytest.mark.parametrize(
    "value",
    [
        np.array([object(), object()]),
        np.array(["a", "bc"]),
        np.array([b"x", b"yz"]),
        np.array([1, 2], dtype="datetime64[s]"),
        np.zeros(2, dtype=[("a", "i4"), ("b", "f4")]),
    ],
    ids=["object", "str", "bytes", "datetime64", "structured"],
)
def test_unsupported_numpy_dtype_raises_invalid_record_error(value: np.ndarray) -> None:
    with pytest.raises(InvalidRecordError) as info:
        encode_tensor(value)
    assert info.value.dtype == value.dtype.name  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", [[1.0, 2.0], 3, "abc", b"raw", None], ids=repr)
def test_non_tensor_raises_invalid_record_error(value: object) -> None:
    with pytest.raises(InvalidRecordError) as info:
        encode_tensor(value)
    assert type(value).__name__ in str(info.value)


@requires_torch
def test_unsupported_torch_dtype_raises_invalid_record_error() -> None:
    for name in ("float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu"):
        dtype = getattr(torch, name, None)
        if dtype is None:
            continue
        try:
            t = torch.zeros(2, dtype=dtype)
        except (RuntimeError, TypeError):  # pragma: no cover - dtype without a zeros kernel
            continue
        with pytest.raises(InvalidRecordError):
            encode_tensor(t)


def test_dtype_name_is_portable() -> None:
    assert codec.dtype_name(np.zeros(1, dtype=">f4")) == "float32"
    assert codec.dtype_name(np.zeros(1, dtype=bool)) == "bool"
    if torch is not None:
        assert codec.dtype_name(torch.zeros(1, dtype=torch.bfloat16)) == "bfloat16"


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_compress_round_trip_of_plain_bytes(compression: str | None) -> None:
    data = bytes(range(256)) * 40
    packed = codec.compress(data, compression)
    if compression is None:
        assert packed is data
    else:
        assert len(packed) < len(data)
    assert bytes(codec.decompress(packed, compression, raw_nbytes=len(data))) == data


def _unstorable_tensors() -> list[Any]:
    if torch is None:
        return []
    return [
        pytest.param(lambda: torch.empty(3, device="meta"), id="meta"),
        pytest.param(lambda: torch.eye(3).to_sparse(), id="sparse-coo"),
        pytest.param(lambda: torch.eye(3).to_sparse_csr(), id="sparse-csr"),
        pytest.param(lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]), id="nested"),
    ]


@pytest.mark.parametrize("make", _unstorable_tensors())
def test_tensors_without_dense_memory_are_refused_typed(make: Any) -> None:
    """Issue 14 finding 9: these raised NotImplementedError / RuntimeError from torch."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = make()
    with pytest.raises(InvalidRecordError, match="cannot store this tensor"):
        encode_tensor(t)


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_lazy_conjugate_and_negative_views_store_their_values() -> None:
    z = torch.tensor([1 + 2j, 3 - 4j])
    for t in (z.conj(), z.conj().imag, z.conj().imag[:1]):
        enc = encode_tensor(t)
        back = decode_tensor(enc.data, dtype=enc.dtype, shape=enc.shape, framework="torch")
        assert torch.equal(back, t.resolve_conj().resolve_neg())


@pytest.mark.parametrize("framework", ["jax", "tf", "", None, 1])
def test_an_unknown_framework_is_a_config_error(framework: Any) -> None:
    from persisting.errors import ConfigError

    enc = encode_tensor(np.arange(3, dtype=np.float32))
    with pytest.raises(ConfigError, match="framework") as info:
        decode_tensor(enc.data, dtype=enc.dtype, shape=enc.shape, framework=framework)
    assert info.value.details["option"] == "framework"
