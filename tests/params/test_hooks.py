"""CheckpointHook in a plain PyTorch loop: periodic saves, resume returns the next step and
continues bit-exactly (model, AdamW, RNG)."""

from __future__ import annotations

import pytest
import torch

from persisting.errors import InvalidRecordError
from persisting.params import ParamStore
from persisting.params.hooks import CheckpointHook


def _setup() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)


def _run(hook: CheckpointHook, model, opt, sched, start: int, stop: int) -> list[float]:
    losses = []
    for step in range(start, stop):
        x = torch.randn(4, 8)  # global RNG: restored on resume too
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        hook.step(step + 1)
    return losses


@pytest.mark.parametrize("async_save", [False, True])
def test_hook_saves_every_n_and_resumes_exactly(store_path: str, async_save: bool) -> None:
    with ParamStore(store_path) as store:
        model, opt, sched = _setup()
        hook = CheckpointHook(store, every_n_steps=3, model=model, optimizer=opt, scheduler=sched, async_save=async_save)
        assert hook.resume() == 0
        full = _run(hook, model, opt, sched, 0, 8)
        hook.wait()
        store.wait()
        assert [i.step for i in store.list()] == [3, 6]

    with ParamStore(store_path) as store:
        model, opt, sched = _setup()
        hook = CheckpointHook(store, every_n_steps=3, model=model, optimizer=opt, scheduler=sched)
        start = hook.resume()
        assert start == 6
        assert _run(hook, model, opt, sched, start, 8) == full[6:]


def test_hook_rejects_bad_arguments(store_path: str) -> None:
    with ParamStore(store_path) as store:
        with pytest.raises(InvalidRecordError):
            CheckpointHook(store, every_n_steps=0)
        with pytest.raises(InvalidRecordError):
            CheckpointHook(store, every_n_steps=1, stateful={"rng": torch.nn.Linear(1, 1)})
