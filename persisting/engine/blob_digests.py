"""Digests of new blob files from the payload checksums the writer already computed.

Lance's blob v2 keeps large payloads back to back in ``data/<data file>/<id>.blob``. When a
table stores an xxh3-128 checksum per payload (see :mod:`~persisting.engine.payloads`), a new
blob file's digest need not be computed by reading the file back after the commit: its
payloads' descriptors (offset, size) tile the file, and the digest of the file is recorded as a
*segmented digest* -- the xxh3-128 over the payload digests in file order, plus the segment
sizes. Checking it (``verify``, damage reports) reads the file once and hashes each segment, so
it catches exactly what a whole-file digest catches: any changed, missing or extra byte.

A file whose payloads do not tile it exactly (or lack a checksum) gets no entry here; the
integrity record then hashes it from disk as before.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import xxhash

if TYPE_CHECKING:
    import lance

    from persisting.engine.payloads import PayloadColumn

__all__ = ["SEGMENTED", "blob_file_digests", "check_segmented", "segmented"]

SEGMENTED = "seg:"  # prefix of a segmented digest: "seg:<xxh3-128 of the payload digests>:<size>,<size>,..."
_PACKED, _DEDICATED = 1, 2  # Lance blob v2 descriptor kinds kept in a .blob file
_PIECE = 8 << 20

log = logging.getLogger(__name__)


def segmented(digests: Sequence[bytes], sizes: Sequence[int]) -> str:
    """The segmented digest of a file made of payloads with these xxh3-128 ``digests`` and ``sizes``."""
    return f"{SEGMENTED}{xxhash.xxh3_128_hexdigest(b''.join(digests))}:{','.join(map(str, sizes))}"


def check_segmented(path: str, expected: str) -> bool:
    """True when the file at ``path`` matches the segmented digest ``expected`` (read once)."""
    try:
        whole, sizes_text = expected.removeprefix(SEGMENTED).split(":", 1)
        sizes = [int(s) for s in sizes_text.split(",")] if sizes_text else []
    except ValueError:
        return False
    digests = []
    buf = bytearray(_PIECE)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        for size in sizes:
            h = xxhash.xxh3_128()
            left = size
            while left:
                n = f.readinto(view[: min(left, _PIECE)])
                if not n:
                    return False  # shorter than its segments
                h.update(view[:n])
                left -= n
            digests.append(h.digest())
        if f.read(1):
            return False  # longer than its segments
    return xxhash.xxh3_128_hexdigest(b"".join(digests)) == whole


def _as_digest(value: object) -> bytes | None:
    if isinstance(value, str):
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            return None
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
    else:
        return None
    return raw if len(raw) == 16 else None


def blob_file_digests(
    ds: lance.LanceDataset, root: str, new_files: Sequence[str], payloads: Sequence[PayloadColumn]
) -> dict[str, tuple[int, str]]:
    """Segmented digests of the new blob files among ``new_files`` (relative to ``root``) whose
    payloads in ``ds`` all carry a checksum and tile the file exactly; other files are left out.
    Reads only the new fragments' descriptors and checksum columns, never the blob bytes."""
    blob_files = {f for f in new_files if f.startswith("data/") and f.endswith(".blob")}
    new_data = {f for f in new_files if f.startswith("data/") and f.endswith(".lance")}
    if not blob_files or not payloads:
        return {}
    names = set(ds.schema.names)
    cols = [p for p in payloads if p.payload in names and p.checksum in names]
    segments: dict[str, list[tuple[int, int, bytes | None]]] = {}
    try:
        for frag in ds.get_fragments():
            data_file = next((f.path for f in frag.metadata.files if "data/" + f.path in new_data), None)
            if data_file is None:
                continue
            stem = "data/" + data_file.removesuffix(".lance") + "/"
            for p in cols:
                rows = frag.to_table(columns=[p.payload, p.checksum]).to_pylist()
                for row in rows:
                    d = row[p.payload]
                    if not isinstance(d, dict) or d.get("kind") not in (_PACKED, _DEDICATED) or d.get("blob_uri"):
                        continue
                    rel = stem + format(int(d["blob_id"]), "032b")[::-1] + ".blob"
                    segments.setdefault(rel, []).append(
                        (int(d["position"]), int(d["size"]), _as_digest(row[p.checksum])))
    except Exception as exc:  # noqa: BLE001 - fall back to hashing the files from disk
        log.debug("blob descriptors of %s unavailable (%s); hashing its blob files", root, exc)
        return {}
    out: dict[str, tuple[int, str]] = {}
    for rel in blob_files:
        segs = sorted(segments.get(rel, ()))
        try:
            size = os.path.getsize(os.path.join(root, rel))
        except OSError:
            continue
        end = 0
        for pos, n, digest in segs:
            if pos != end or digest is None:
                break
            end += n
        else:
            if segs and end == size:
                out[rel] = (size, segmented([s[2] for s in segs], [s[1] for s in segs]))  # type: ignore[misc]
    return out
