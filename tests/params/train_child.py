"""A tiny deterministic training run, used by test_resume.py in fresh interpreters.

``python train_child.py STORE full``   trains steps 1..20, saves a checkpoint after step 10,
                                       prints the 20 losses as JSON (float.hex, bit-exact).
``python train_child.py STORE resume`` opens STORE, restores step 10 (model, AdamW, torch,
                                       numpy and random state) and prints losses of 11..20.
Dropout draws from the global torch RNG, the noise from numpy and random: all three must be
restored exactly for the losses to match.
"""

from __future__ import annotations

import json
import random
import sys

import numpy as np
import torch

from persisting.params import ParamStore


def build() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(1234)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(32, 1)
    )
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, step: int) -> float:
    g = torch.Generator().manual_seed(step)
    x = torch.randn(8, 16, generator=g)
    y = x.sum(dim=1, keepdim=True) * 0.1
    noise = float(np.random.normal()) * 1e-3 + random.random() * 1e-3
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y) + noise
    loss.backward()
    opt.step()
    return float(loss.item())


def main() -> None:
    path, mode = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    model, opt = build()
    losses = []
    with ParamStore(path) as store:
        if mode == "full":
            np.random.seed(7)
            random.seed(7)
            for step in range(1, 21):
                losses.append(train_step(model, opt, step))
                if step == 10:
                    store.save(
                        {"model": model.state_dict(), "optim": opt.state_dict(), "step": step,
                         "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                                 "python": random.getstate()}},
                        step=step,
                    )
        else:
            state = store.load()
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optim"])
            torch.set_rng_state(state["rng"]["torch"])
            np.random.set_state(state["rng"]["numpy"])
            random.setstate(state["rng"]["python"])
            for step in range(state["step"] + 1, 21):
                losses.append(train_step(model, opt, step))
    print(json.dumps([x.hex() for x in losses]))


if __name__ == "__main__":
    main()
