"""Checkpoint demo: a small training loop checkpointed, "crashed", resumed bit-exactly."""

from __future__ import annotations

import os

import torch
from torch import nn

from persisting.demos import table
from persisting.params import ParamStore
from persisting.params.hooks import CheckpointHook


def _setup() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 1))
    model[0].requires_grad_(False)  # a frozen layer: its bytes never change, so they are stored once
    return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: range, hook: CheckpointHook | None) -> list[float]:
    losses = []
    for step in steps:
        gen = torch.Generator().manual_seed(step)
        x, y = torch.randn(64, 32, generator=gen), torch.randn(64, 1, generator=gen)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if hook is not None:
            hook.step(step + 1)
    return losses


def run(root: str) -> None:
    path = os.path.join(root, "checkpoints")
    model, opt = _setup()
    reference = _train(model, opt, range(20), None)

    model, opt = _setup()
    with ParamStore(path, keep_last=3) as store:
        hook = CheckpointHook(store, every_n_steps=5, model=model, optimizer=opt)
        _train(model, opt, range(12), hook)  # checkpoints after steps 5 and 10, then "crashes"
    print("   trained 12 of 20 steps (AdamW, dropout), checkpoints every 5 steps, then the process 'died'")

    model, opt = _setup()
    with ParamStore(path, keep_last=3) as store:
        hook = CheckpointHook(store, every_n_steps=5, model=model, optimizer=opt)
        start = hook.resume()
        resumed = _train(model, opt, range(start, 20), hook)
        infos = store.list()
        stats = store.stats()
    same = resumed == reference[start:]
    rows = [
        ("resumed from step", start),
        ("losses of steps 11-20 equal an uninterrupted run", "yes, bit for bit" if same else "NO"),
        ("checkpoints kept (keep_last=3)", ", ".join(str(i.step) for i in infos)),
        ("bytes per checkpoint", f"{infos[-1].nbytes:,}"),
        ("bytes the last save wrote", f"{infos[-1].new_bytes:,} (unchanged chunks are shared)"),
        ("chunks stored", stats["chunks"]),
    ]
    print(table(rows))
    if not same:
        raise AssertionError("resume was not bit-exact")
