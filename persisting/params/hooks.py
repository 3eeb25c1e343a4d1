"""Training-loop hooks: checkpoint every N steps and resume, for a plain PyTorch loop.

::

    hook = CheckpointHook(store, every_n_steps=100, model=model, optimizer=opt)
    start = hook.resume()              # 0 on a fresh store, else the step to continue from
    for step in range(start, total):
        train_step(...)
        hook.step(step + 1)            # saves after steps 100, 200, ...

The saved state is ``{"model", "optim", "scheduler", <stateful names>, "rng", "step"}``; RNG
state (torch, CUDA when present, numpy, random) is captured and restored so that a resumed run
draws the same dropout masks and shuffles as an uninterrupted one.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

import numpy as np

from persisting.errors import InvalidRecordError, NotFoundError
from persisting.params.manifest import CheckpointInfo
from persisting.params.store import ParamStore

__all__ = ["CheckpointHook", "capture_rng", "restore_rng"]


def capture_rng() -> dict[str, Any]:
    """The state of every global random generator a training loop draws from."""
    import torch

    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointHook:
    """Save training state every ``every_n_steps`` steps and restore it on resume.

    ``model``, ``optimizer`` and ``scheduler`` (anything with ``state_dict``/``load_state_dict``)
    and ``stateful`` (more such objects by name) are saved together with the RNG state and the
    step. ``async_save`` writes in the background (a copy is taken first).
    """

    def __init__(
        self,
        store: ParamStore,
        every_n_steps: int,
        *,
        model: Any = None,
        optimizer: Any = None,
        scheduler: Any = None,
        stateful: Mapping[str, Any] | None = None,
        rng: bool = True,
        async_save: bool = False,
    ) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise InvalidRecordError(f"every_n_steps must be an int >= 1, got {every_n_steps!r}")
        self.store = store
        self.every_n_steps = every_n_steps
        self.objects: dict[str, Any] = {}
        for name, obj in (("model", model), ("optim", optimizer), ("scheduler", scheduler), *(stateful or {}).items()):
            if obj is None:
                continue
            if name in ("rng", "step") or name in self.objects:
                raise InvalidRecordError(f"stateful name {name!r} is reserved or used twice", name=name)
            self.objects[name] = obj
        self.rng = rng
        self.async_save = async_save
        self.last: CheckpointInfo | Future[CheckpointInfo] | None = None

    def state(self, step: int) -> dict[str, Any]:
        """What a checkpoint at ``step`` holds."""
        state: dict[str, Any] = {name: obj.state_dict() for name, obj in self.objects.items()}
        if self.rng:
            state["rng"] = capture_rng()
        state["step"] = int(step)
        return state

    def step(self, step: int) -> CheckpointInfo | Future[CheckpointInfo] | None:
        """Call after finishing step ``step``; saves when it is a multiple of ``every_n_steps``."""
        if step % self.every_n_steps:
            return None
        return self.save(step)

    def save(self, step: int, **kwargs: Any) -> CheckpointInfo | Future[CheckpointInfo]:
        """Save now, whatever the step (e.g. at the end of training)."""
        if self.async_save:
            self.last = self.store.save_async(self.state(step), step=step, **kwargs)
        else:
            self.last = self.store.save(self.state(step), step=step, **kwargs)
        return self.last

    def resume(self, step: int | None = None) -> int:
        """Restore the newest checkpoint (or ``step``) into the objects; return the step to
        continue from, 0 when the store holds no checkpoint."""
        self.store.wait()
        if step is None and self.store.latest() is None:
            return 0
        try:
            state = self.store.load(step)
        except NotFoundError:
            if step is None:
                return 0
            raise
        for name, obj in self.objects.items():
            if name not in state:
                raise NotFoundError(f"checkpoint step {state.get('step')} has no {name!r} state to restore", key=name)
            obj.load_state_dict(state[name])
        if self.rng and "rng" in state:
            restore_rng(state["rng"])
        return int(state["step"])

    def wait(self) -> None:
        """Wait for a background save to finish (raises its error, if any)."""
        if isinstance(self.last, Future):
            self.last.result()
