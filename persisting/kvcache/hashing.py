"""Chunk keys: chained, seedless, deterministic hashes of token ids.

A prompt is cut into chunks of ``chunk_size`` tokens. Chunk 0's key hashes the namespace seed
and its tokens; chunk i's key hashes chunk i-1's key and its tokens, so a key names a whole
prefix, not just its last chunk. Token ids are hashed as little-endian uint32 (every tokenizer's
vocabulary fits). The hash is BLAKE2b-256 from the standard library: the same bytes in every
process, platform and ``PYTHONHASHSEED``; on CPUs without SHA extensions it runs ~3x faster than
SHA-256, which matters because a lookup hashes every chunk of the prompt.
"""

from __future__ import annotations

import array
import hashlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from persisting.kvcache.namespaces import check_namespace
from persisting.errors import InvalidRecordError

__all__ = ["KEY_VERSION", "as_token_array", "chunk_keys", "iter_chunk_keys", "namespace_seed"]

KEY_VERSION = b"persisting.kvcache.key/v1"
_MAX_TOKEN = 2**32 - 1


def _digest(data: bytes | memoryview, prev: bytes) -> bytes:
    h = hashlib.blake2b(prev, digest_size=32)
    h.update(data)
    return h.digest()


def namespace_seed(namespace: str, chunk_size: int) -> bytes:
    """The 32-byte seed every chain in ``namespace`` starts from.

    The chunk size is part of the seed: a store reopened with another chunk size finds no
    entries rather than entries cut at other boundaries.
    """
    check_namespace(namespace)
    text = KEY_VERSION + b"\0" + namespace.encode() + b"\0" + str(int(chunk_size)).encode()
    return hashlib.blake2b(text, digest_size=32).digest()


def as_token_array(tokens: Any) -> np.ndarray:
    """Validate tokens (list of ints, 1-D numpy array or 1-D torch tensor) as little-endian uint32.

    Raises InvalidRecordError for anything else: floats, bools, negative or too-large ids,
    more than one dimension. Never mutates the input.
    """
    if type(tokens).__module__.startswith("torch") and "torch" in sys.modules:
        import torch

        if not isinstance(tokens, torch.Tensor):
            raise InvalidRecordError(f"tokens must be a list of ints or a 1-D array/tensor, got {type(tokens).__name__}")
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise InvalidRecordError(f"tokens must be integer token ids, got a torch tensor of {tokens.dtype}", dtype=str(tokens.dtype))
        arr = tokens.detach().cpu().numpy()
    elif isinstance(tokens, np.ndarray):
        if tokens.dtype.kind not in "iu":
            raise InvalidRecordError(f"tokens must be integer token ids, got a numpy array of {tokens.dtype}", dtype=str(tokens.dtype))
        arr = tokens
    elif isinstance(tokens, (list, tuple)):
        try:  # one pass that refuses floats, strings and None (array.array accepts only integers)
            arr = np.frombuffer(array.array("q", tokens), dtype=np.int64)
        except (TypeError, OverflowError) as exc:
            bad = next((t for t in tokens if not isinstance(t, (int, np.integer))), None)
            if bad is None:
                raise InvalidRecordError(f"token ids must be in [0, {_MAX_TOKEN}]: {exc}") from None
            raise InvalidRecordError(
                f"tokens must be ints; found {bad!r} ({type(bad).__name__})", value_type=type(bad).__name__
            ) from None
    else:
        raise InvalidRecordError(
            f"tokens must be a list of ints, a 1-D numpy array or a 1-D torch tensor, got {type(tokens).__name__}",
            value_type=type(tokens).__name__,
        )
    if arr.ndim != 1:
        raise InvalidRecordError(f"tokens must be 1-D, got shape {tuple(arr.shape)}", shape=tuple(arr.shape))
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > _MAX_TOKEN):
        raise InvalidRecordError(f"token ids must be in [0, {_MAX_TOKEN}]; got min {int(arr.min())}, max {int(arr.max())}")
    return np.ascontiguousarray(arr, dtype="<u4")


def iter_chunk_keys(seed: bytes, tokens: np.ndarray, chunk_size: int) -> Iterator[bytes]:
    """Yield the key of each full chunk of ``tokens`` (validated uint32), lazily, so a lookup
    stops hashing at its first miss."""
    raw = tokens.view(np.uint8).data
    step = chunk_size * 4
    prev = seed
    for start in range(0, (len(tokens) // chunk_size) * step, step):
        prev = _digest(raw[start : start + step], prev)
        yield prev


def chunk_keys(seed: bytes, tokens: Sequence[int] | np.ndarray | Any, chunk_size: int) -> list[bytes]:
    """All full-chunk keys of ``tokens`` (any accepted token form)."""
    return list(iter_chunk_keys(seed, as_token_array(tokens), chunk_size))
