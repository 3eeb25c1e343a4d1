"""ParamStoreCallback, driven through its TrainerCallback events as a Trainer would call them.

accelerate (which ``transformers.Trainer`` needs) is not installed here, so the events are
called directly with real ``TrainerState``/``TrainerControl`` objects and a plain loop.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file

from persisting.params import ParamStore
from persisting.params.hf import ParamStoreCallback


def _setup() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, opt, torch.optim.lr_scheduler.LinearLR(opt, total_iters=10)


def _train(cb, model, opt, sched, state, start: int, stop: int) -> list[float]:
    control = transformers.TrainerControl()
    losses = []
    for step in range(start, stop):
        opt.zero_grad()
        loss = model(torch.randn(4, 8)).pow(2).mean()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        state.global_step = step + 1
        state.log_history.append({"loss": loss.item(), "step": step + 1})
        cb.on_step_end(None, state, control, model=model, optimizer=opt, lr_scheduler=sched)
        cb.on_save(None, state, control, model=model, optimizer=opt, lr_scheduler=sched)  # same step: no twin
    return losses


def test_callback_saves_and_resumes_through_checkpoint_dir(store_path: str, tmp_path) -> None:
    with ParamStore(store_path) as store:
        model, opt, sched = _setup()
        cb = ParamStoreCallback(store, every_n_steps=4)
        state = transformers.TrainerState()
        full = _train(cb, model, opt, sched, state, 0, 10)
        cb.on_train_end(None, state, transformers.TrainerControl())
        assert [i.step for i in store.list()] == [4, 8]

        resumed_cb = ParamStoreCallback(store)
        path = resumed_cb.checkpoint_dir(str(tmp_path / "out"))
        assert path.endswith("checkpoint-8")
        with open(os.path.join(path, "trainer_state.json")) as f:
            saved_state = transformers.TrainerState(**json.load(f))
        assert saved_state.global_step == 8 and len(saved_state.log_history) == 8

        model, opt, sched = _setup()
        model.load_state_dict(load_file(os.path.join(path, "model.safetensors")))  # what the Trainer does
        resumed_cb.on_train_begin(None, saved_state, transformers.TrainerControl(), model=model, optimizer=opt, lr_scheduler=sched)
        assert _train(resumed_cb, model, opt, sched, saved_state, 8, 10) == full[8:]
