"""vLLM KV connector: vLLM saves prompt prefixes into a KVCacheStore and loads them back,
across requests, processes and restarts.

Load it through vLLM's config::

    KVTransferConfig(kv_connector="PersistingConnector", kv_connector_module_path="persisting.kvcache.vllm",
                     kv_role="kv_both", kv_connector_extra_config={"path": "/data/kv"})

One store chunk is one vLLM block (``chunk_size = block_size``), so a chunk key names the whole
block-aligned prefix that ends with that block. A chunk holds that block of every layer: the
per-layer ``[blocks, heads, block_size, channels]`` views vLLM hands to connectors, one block's
``[layers, heads, block_size, channels]`` bytes contiguous, stored as ``[block_size, rest]`` rows
(axis 0 counts the block's tokens but rows are not tokens). Whole blocks are moved with
contiguous copies, and packed interiors (the CPU backend keeps K and V in one block) are
reproduced bit for bit. The store never splits a chunk, so the row view is never cut.

Processes: vLLM runs the scheduler and the workers in different processes on CPU (``mp``
executor). The worker holds the store's one writer handle; the scheduler holds a read-only
handle and ``refresh()``es it before each lookup, so it sees every chunk the worker committed.
A chunk that disappears between lookup and load (evicted, corrupt) is reported to vLLM as a
failed block, and vLLM recomputes it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)
from vllm.v1.kv_cache_interface import FullAttentionSpec

from persisting.engine.codec import COMPRESSIONS
from persisting.engine.names import check_name
from persisting.errors import ConfigError, InvalidNameError, LockedError, PersistingError, SchemaError
from persisting.kvcache.store import KVCacheStore

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

__all__ = ["ConnectorConfig", "PersistingConnector", "PersistingConnectorMetadata"]

log = logging.getLogger(__name__)
_TOKEN_AXIS = 0  # of a stored chunk: [block_size, layers * heads * channels], a block's bytes in order
_LAYOUT_VERSION = "persisting.vllm/v2 block-major [L,H,N,C] as [N, L*H*C]"
_KNOWN = {"path", "namespace", "capacity_bytes", "compression", "storage_options", "wal_dir"}


@dataclass(frozen=True)
class ConnectorConfig:
    """``kv_connector_extra_config``, checked: ``path`` (required, local or ``s3://``),
    ``namespace`` (default: derived from model and KV layout), ``capacity_bytes``,
    ``compression``, ``storage_options``, ``wal_dir``."""

    path: str
    namespace: str | None = None
    capacity_bytes: int | None = None
    compression: str | None = None
    storage_options: dict[str, str] | None = None
    wal_dir: str | None = None

    @classmethod
    def from_extra(cls, extra: dict[str, Any] | None) -> ConnectorConfig:
        """Check vLLM's ``kv_connector_extra_config``; ConfigError names the bad key."""
        extra = dict(extra or {})
        unknown = sorted(set(extra) - _KNOWN)
        if unknown:
            raise ConfigError(f"kv_connector_extra_config has unknown keys {unknown}; known keys are {sorted(_KNOWN)}",
                              keys=unknown)
        path = extra.get("path")
        if not isinstance(path, str) or not path:
            raise ConfigError(
                "PersistingConnector needs kv_connector_extra_config['path']: a local directory or s3:// URI "
                f"where the KV cache is stored (got {path!r})",
                field="path",
            )
        cap, comp, opts, ns = (extra.get(k) for k in ("capacity_bytes", "compression", "storage_options", "namespace"))
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
            _bad("capacity_bytes", "an int >= 0 or absent", cap)
        if comp not in COMPRESSIONS:
            _bad("compression", f"one of {COMPRESSIONS}", comp)
        if opts is not None and not isinstance(opts, dict):
            _bad("storage_options", "a dict of str", opts)
        if ns is not None:
            try:
                check_name(ns, what="kv_connector_extra_config['namespace']")
            except InvalidNameError as exc:
                raise ConfigError(str(exc), field="namespace") from None
        return cls(path=path, namespace=ns, capacity_bytes=cap, compression=comp, storage_options=opts,
                   wal_dir=extra.get("wal_dir"))


def _bad(key: str, wanted: str, got: object) -> None:
    raise ConfigError(f"kv_connector_extra_config[{key!r}] must be {wanted}, got {got!r}", field=key)


@dataclass(frozen=True)
class _Load:
    req_id: str
    tokens: list[int]  # the prefix to load, block-aligned
    block_ids: list[int]  # vLLM blocks of that prefix
    first_block: int  # blocks before this one are already in vLLM's cache (local prefix hit)


@dataclass(frozen=True)
class _Save:
    req_id: str
    tokens: list[int]  # the prompt's full blocks
    block_ids: list[int]


@dataclass
class PersistingConnectorMetadata(KVConnectorMetadata):
    """What the workers load and save in one step."""

    loads: list[_Load] = field(default_factory=list)
    saves: list[_Save] = field(default_factory=list)


@dataclass
class _Request:
    """Scheduler-side state of one request."""

    tokens: list[int]
    full: int  # tokens in the prompt's full blocks
    stored: int = 0  # of those, tokens the store held at the last lookup
    local: int = 0  # tokens vLLM's own prefix cache held
    external: int = 0  # tokens to load from the store
    block_ids: list[int] = field(default_factory=list)
    load_pending: bool = False
    saved: bool = False


def _check_layout(kv_cache_config: KVCacheConfig, vllm_config: VllmConfig) -> FullAttentionSpec:
    """The single full-attention spec this connector supports; ConfigError naming anything else."""
    par = vllm_config.parallel_config
    if par.tensor_parallel_size != 1 or par.pipeline_parallel_size != 1:
        raise ConfigError(
            f"PersistingConnector supports one worker; this engine has tensor_parallel_size="
            f"{par.tensor_parallel_size}, pipeline_parallel_size={par.pipeline_parallel_size}",
            field="parallel_config",
        )
    groups = kv_cache_config.kv_cache_groups
    kinds = [type(g.kv_cache_spec).__name__ for g in groups]
    if len(groups) != 1 or not isinstance(groups[0].kv_cache_spec, FullAttentionSpec):
        raise ConfigError(
            f"PersistingConnector supports models whose layers all use full attention (one KV cache group); "
            f"model {vllm_config.model_config.model!r} has KV cache groups {kinds} (sliding-window, hybrid "
            "and state-space layers are not supported)",
            field="kv_cache_groups", groups=kinds,
        )
    return groups[0].kv_cache_spec


def derive_namespace(vllm_config: VllmConfig, kv_cache_config: KVCacheConfig) -> str:
    """A namespace that differs whenever the stored bytes would mean something else: model,
    revision, dtypes, block size, heads, head size, layer count and vLLM's KV cache layout."""
    spec = _check_layout(kv_cache_config, vllm_config)
    mc, cc = vllm_config.model_config, vllm_config.cache_config
    parts = [
        _LAYOUT_VERSION, str(mc.model), str(mc.revision), str(mc.dtype), str(cc.cache_dtype), str(spec.dtype),
        str(spec.block_size), str(spec.num_kv_heads), str(spec.head_size), type(spec).__name__,
        str(len(kv_cache_config.kv_cache_groups[0].layer_names)), str(kv_cache_config.kv_cache_layout),
        str(vllm_config.device_config.device_type),
    ]
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=8).hexdigest()
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(mc.model).rstrip("/").split("/")[-1])[:60].strip(".-") or "model"
    return f"vllm-{slug}-{digest}"


class PersistingConnector(KVConnectorBase_V1):
    """A vLLM v1 KV connector backed by :class:`persisting.KVCacheStore`."""

    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self.config = ConnectorConfig.from_extra(self._kv_transfer_config.kv_connector_extra_config)
        spec = _check_layout(kv_cache_config, vllm_config)
        self.block_size = int(spec.block_size)
        self.namespace = self.config.namespace or derive_namespace(vllm_config, kv_cache_config)
        self._layer_names = list(kv_cache_config.kv_cache_groups[0].layer_names)
        self._store: KVCacheStore | None = None
        self._writable = False
        # scheduler side
        self._reqs: dict[str, _Request] = {}
        # worker side
        self._layers: list[torch.Tensor] = []
        self._failed: set[int] = set()
        if role == KVConnectorRole.WORKER:
            self._open_writer()

    # -- store handles -----------------------------------------------------------------------
    def _open(self, read_only: bool) -> KVCacheStore:
        c = self.config
        try:
            return KVCacheStore(c.path, namespace=self.namespace, chunk_size=self.block_size,
                                capacity_bytes=c.capacity_bytes, compression=c.compression,
                                storage_options=c.storage_options, read_only=read_only, wal_dir=c.wal_dir)
        except (SchemaError, InvalidNameError) as exc:  # a bad value in kv_connector_extra_config
            raise ConfigError(f"PersistingConnector: kv_connector_extra_config: {exc}",
                              field="kv_connector_extra_config") from exc

    def _open_writer(self) -> None:
        try:
            self._store, self._writable = self._open(read_only=False), True
        except LockedError as exc:
            log.warning("PersistingConnector: %s; this engine loads from %s but does not save to it",
                        exc, self.config.path)
            self._store = self._open(read_only=True)

    def _reader(self) -> KVCacheStore | None:
        """The scheduler's read-only handle, refreshed so it sees what the worker committed."""
        try:
            if self._store is None:
                self._store = self._open(read_only=True)
            else:
                self._store.refresh()
        except PersistingError as exc:  # not created yet by the worker, or unreadable: no hits
            log.debug("PersistingConnector: store not readable yet: %s", exc)
            return None
        return self._store

    # -- scheduler side ----------------------------------------------------------------------
    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int | None, bool]:
        """Tokens beyond vLLM's own prefix-cache hit that the store holds (whole blocks, and
        never the last prompt token: vLLM must compute it to sample)."""
        tokens = list(request.prompt_token_ids or [])
        if not tokens or request.mm_features or request.lora_request is not None:
            return 0, False  # token ids alone do not name the KV of images or adapters
        bs = self.block_size
        state = self._reqs.get(request.request_id) or _Request(tokens=tokens, full=len(tokens) // bs * bs)
        self._reqs[request.request_id] = state
        store = self._reader()
        state.stored = store.lookup(tokens[: state.full]) if store is not None and state.full else 0
        loadable = min(state.stored, (len(tokens) - 1) // bs * bs)
        state.local = num_computed_tokens
        state.external = max(0, loadable - num_computed_tokens)
        return state.external, False

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int) -> None:
        state = self._reqs.get(request.request_id)
        if state is not None:
            state.external = num_external_tokens
            state.load_pending = num_external_tokens > 0

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        meta = PersistingConnectorMetadata()
        steps: list[tuple[str, int]] = []
        for new in scheduler_output.scheduled_new_reqs:
            state = self._reqs.get(new.req_id)
            if state is not None:
                state.block_ids = list(new.block_ids[0])
                steps.append((new.req_id, new.num_computed_tokens))
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            state = self._reqs.get(req_id)
            if state is None:
                continue
            new_ids = cached.new_block_ids[i]
            if req_id in cached.resumed_req_ids:
                state.block_ids = list(new_ids[0]) if new_ids else []
            elif new_ids:
                state.block_ids.extend(new_ids[0])
            steps.append((req_id, cached.num_computed_tokens[i]))
        bs = self.block_size
        for req_id, computed in steps:
            state = self._reqs[req_id]
            if state.load_pending:
                state.load_pending = False
                end = state.local + state.external
                meta.loads.append(_Load(req_id, state.tokens[:end], state.block_ids[: end // bs], state.local // bs))
            done = computed + scheduler_output.num_scheduled_tokens.get(req_id, 0)
            if not state.saved and state.full and done >= state.full:
                state.saved = True
                if state.stored < state.full:
                    meta.saves.append(_Save(req_id, state.tokens[: state.full], state.block_ids[: state.full // bs]))
        return meta

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        self._reqs.pop(request.request_id, None)
        return False, None

    # -- worker side -------------------------------------------------------------------------
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        """Keep the per-layer paged caches, in the model's layer order; refuse layouts we cannot copy."""
        missing = [n for n in self._layer_names if n not in kv_caches]
        if missing:
            raise ConfigError(f"PersistingConnector: vLLM registered no KV cache for layers {missing[:4]}",
                              layers=missing)
        layers = [kv_caches[n] for n in self._layer_names]
        shapes = {tuple(t.shape[1:]) for t in layers}
        if any(t.dim() != 4 for t in layers) or len(shapes) != 1 or layers[0].shape[2] != self.block_size:
            raise ConfigError(
                "PersistingConnector supports per-layer KV caches viewed as [blocks, heads, block_size, channels] "
                f"with block_size {self.block_size}; this model's layers have shapes "
                f"{sorted({tuple(t.shape) for t in layers})[:4]}",
                field="kv_caches",
            )
        self._layers = layers

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        """Copy every matched block of this step into vLLM's paged cache before the forward pass."""
        if not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        assert isinstance(meta, PersistingConnectorMetadata)
        assert self._store is not None
        bs = self.block_size
        for load in meta.loads:
            kv = self._store.get(load.tokens, token_axis=_TOKEN_AXIS, framework="torch")
            got = 0 if kv is None else kv.shape[_TOKEN_AXIS] // bs
            if got < len(load.block_ids):  # evicted or corrupt since the scheduler looked
                self._failed.update(load.block_ids[max(got, load.first_block):])
            if got <= load.first_block or kv is None:
                continue
            blocks = kv.view((got, len(self._layers)) + tuple(self._layers[0].shape[1:]))  # [blocks, L, H, N, C]
            for n in range(load.first_block, got):  # one contiguous copy per block and layer: faster than index_copy_
                block_id = load.block_ids[n]
                for layer, dst in enumerate(self._layers):
                    dst[block_id].copy_(blocks[n, layer])

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # start_load_kv loads every layer before the forward pass starts

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        return  # whole blocks of all layers are copied at once in wait_for_save

    def wait_for_save(self) -> None:
        """Store the full prompt blocks computed in this step (those the store lacks)."""
        if not self._writable or not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        assert isinstance(meta, PersistingConnectorMetadata) and self._store is not None
        bs = self.block_size
        for save in meta.saves:
            if self._store.lookup(save.tokens) >= len(save.tokens):
                continue  # another request or process stored it meanwhile
            # every block is copied, stored ones too: another process may evict them before put
            n_blocks = len(save.block_ids)
            blocks = torch.empty((n_blocks, len(self._layers)) + tuple(self._layers[0].shape[1:]),
                                 dtype=self._layers[0].dtype)  # [blocks, L, H, N, C], one block contiguous
            for n, block_id in enumerate(save.block_ids):
                for layer, src in enumerate(self._layers):
                    blocks[n, layer].copy_(src[block_id])
            self._store.put(save.tokens, blocks.view(n_blocks * bs, -1), token_axis=_TOKEN_AXIS)

    def get_block_ids_with_load_errors(self) -> set[int]:
        failed, self._failed = self._failed, set()
        return failed

    def shutdown(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
