"""The shared storage engine: Lance datasets with a write-ahead log in front.

It knows nothing of KV caches, checkpoints or episodes; the stores build on :class:`Table`
and :mod:`persisting.engine.codec`.
"""

from persisting.engine.codec import EncodedTensor, decode_tensor, encode_tensor
from persisting.engine.durable import fsync_path
from persisting.engine.flocks import held, try_flock, unlock
from persisting.engine.indexes import IndexInfo
from persisting.engine.names import check_name
from persisting.engine.options import Durability, TableOptions
from persisting.engine.rowkeys import RowChange, RowFollower, RowKeys
from persisting.engine.rowlayout import RowLayout
from persisting.engine.table import Table
from persisting.engine.wal import WAL, ReplayReport

__all__ = [
    "IndexInfo",
    "Durability",
    "EncodedTensor",
    "ReplayReport",
    "RowChange",
    "RowFollower",
    "RowKeys",
    "RowLayout",
    "Table",
    "TableOptions",
    "WAL",
    "check_name",
    "decode_tensor",
    "encode_tensor",
    "fsync_path",
    "held",
    "try_flock",
    "unlock",
]
