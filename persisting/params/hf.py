"""A ``transformers.TrainerCallback`` that checkpoints a Trainer into a :class:`ParamStore`.

Saving: every ``every_n_steps`` optimizer steps (or, when None, whenever the Trainer itself
saves) the callback stores model, optimizer, scheduler, RNG state and the ``TrainerState``.

Resuming: the Trainer decides where to restart from a checkpoint *directory*, so
:meth:`ParamStoreCallback.checkpoint_dir` writes a light one from the store (``model.safetensors``
and ``trainer_state.json``, no pickles); pass it to ``trainer.train(resume_from_checkpoint=...)``.
The Trainer loads the weights and skips the steps already done, and at ``on_train_begin`` the
callback restores optimizer and scheduler state from the same checkpoint. The RNG state goes
into the directory as the ``rng_state.pth`` the Trainer expects: the Trainer restores it itself,
after it has skipped the batches already trained on (which draws random numbers), so dropout
masks and shuffling continue exactly as in an uninterrupted run. Restoring it any earlier (at
``on_train_begin``) lets that skipping consume the restored state.
"""

from __future__ import annotations

import dataclasses
import json
import os
from concurrent.futures import Future
from typing import Any

from transformers import TrainerCallback

from persisting.params.hooks import capture_rng, restore_rng
from persisting.params.manifest import CheckpointInfo
from persisting.params.store import ParamStore

__all__ = ["ParamStoreCallback"]


class ParamStoreCallback(TrainerCallback):
    """Checkpoint a ``transformers.Trainer`` into ``store``; see the module docstring."""

    def __init__(self, store: ParamStore, *, every_n_steps: int | None = None, async_save: bool = False) -> None:
        self.store = store
        self.every_n_steps = every_n_steps
        self.async_save = async_save
        self._restore_step: int | None = None
        self._saved: set[int] = set()
        self.last: CheckpointInfo | Future[CheckpointInfo] | None = None

    # -- saving ----------------------------------------------------------------------------
    def _save(self, state: Any, model: Any, optimizer: Any, lr_scheduler: Any) -> None:
        step = int(state.global_step)
        if not state.is_world_process_zero or step in self._saved or step in {i.step for i in self.store.list()}:
            return  # on_step_end and on_save may both fire for one step
        snapshot: dict[str, Any] = {"model": model.state_dict()}
        if optimizer is not None:
            snapshot["optim"] = optimizer.state_dict()
        if lr_scheduler is not None:
            snapshot["scheduler"] = lr_scheduler.state_dict()
        snapshot["rng"] = capture_rng()
        snapshot["trainer_state"] = json.loads(json.dumps(dataclasses.asdict(state)))
        snapshot["step"] = step
        save = self.store.save_async if self.async_save else self.store.save
        self.last = save(snapshot, step=step)
        self._saved.add(step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.every_n_steps and state.global_step % self.every_n_steps == 0:
            self._save(state, kw.get("model"), kw.get("optimizer"), kw.get("lr_scheduler"))

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.every_n_steps is None:
            self._save(state, kw.get("model"), kw.get("optimizer"), kw.get("lr_scheduler"))

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.store.wait()

    # -- resuming --------------------------------------------------------------------------
    def checkpoint_dir(self, output_dir: str, step: int | None = None) -> str:
        """Write ``output_dir/checkpoint-<step>`` for ``Trainer.train(resume_from_checkpoint=)``
        from checkpoint ``step`` (newest by default); return its path."""
        from safetensors.torch import save_file

        self.store.wait()
        info = self.store.info(step)
        state = self.store.load(info.step, keys=["model", "trainer_state"])
        path = os.path.join(output_dir, f"checkpoint-{info.step}")
        os.makedirs(path, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in state["model"].items()}
        save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(path, "trainer_state.json"), "w") as f:
            json.dump(state["trainer_state"], f, indent=2, sort_keys=True)
        rng = self.store.load(info.step, keys=["rng"]).get("rng")
        if rng is not None:
            _write_trainer_rng(rng, os.path.join(path, "rng_state.pth"))
        self._restore_step = info.step
        return path

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self._restore_step is None:
            return
        saved = self.store.load(self._restore_step, keys=["optim", "scheduler"])
        optimizer, lr_scheduler = kw.get("optimizer"), kw.get("lr_scheduler")
        if optimizer is not None and "optim" in saved:
            optimizer.load_state_dict(saved["optim"])
        if lr_scheduler is not None and "scheduler" in saved:
            lr_scheduler.load_state_dict(saved["scheduler"])
        self._restore_step = None  # the RNG: the Trainer restores rng_state.pth at its own point


def _write_trainer_rng(rng: Any, path: str) -> None:
    """Write ``rng`` (as :func:`capture_rng` took it) in the Trainer's ``rng_state.pth`` layout.

    The stored state is put into the generators once and read back with the calls the Trainer
    uses, which gives exactly the types its ``_load_rng_state`` expects; the caller's generators
    are left as they were. The Trainer reads the file with ``torch.load(weights_only=True)``.
    """
    import random

    import numpy as np
    import torch

    mine = capture_rng()
    try:
        restore_rng(rng)
        states: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                                  "cpu": torch.random.get_rng_state()}
        if torch.cuda.is_available() and "cuda" in rng:
            states["cuda"] = torch.cuda.random.get_rng_state_all()
    finally:
        restore_rng(mine)
    tmp = path + ".partial"
    torch.save(states, tmp)
    os.replace(tmp, path)
