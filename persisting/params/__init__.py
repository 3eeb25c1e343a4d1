"""ParamStore: versioned, deduplicated, crash-safe checkpoints for training loops.

Adapters are imported on demand, with their heavy dependencies: ``persisting.params.dcp``
(torch.distributed.checkpoint storage) and ``persisting.params.hf`` (a transformers
TrainerCallback).
"""

from persisting.params.hooks import CheckpointHook
from persisting.params.manifest import CheckpointInfo
from persisting.params.store import GCReport, ParamStore

__all__ = ["CheckpointHook", "CheckpointInfo", "GCReport", "ParamStore"]
