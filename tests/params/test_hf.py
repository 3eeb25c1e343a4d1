"""ParamStoreCallback: driven through its TrainerCallback events with real ``TrainerState``/
``TrainerControl`` objects and a plain loop, and under a real ``transformers.Trainer`` in child
processes (one SIGKILLed mid-run, one resuming).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file
from transformers.trainer_pt_utils import safe_globals

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
        with safe_globals():  # what Trainer._load_rng_state does
            rng = torch.load(os.path.join(path, "rng_state.pth"), weights_only=True)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.random.set_rng_state(rng["cpu"])
        assert _train(resumed_cb, model, opt, sched, saved_state, 8, 10) == full[8:]


def _trainer_child(*args: str, expect_kill: bool = False) -> dict[int, float] | None:
    """Run tests/params/hf_trainer_child.py in a fresh interpreter: its per-step losses."""
    child = os.path.join(os.path.dirname(__file__), "hf_trainer_child.py")
    proc = subprocess.run([sys.executable, child, *args], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"})
    if expect_kill:
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        return None
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1])["losses"].items()}


def test_real_trainer_killed_and_resumed_matches_the_uninterrupted_run(tmp_path) -> None:
    """A real ``Trainer`` (GPT-2 with its dropout) SIGKILLed after step 8, resumed from the store's
    step-5 checkpoint through ``checkpoint_dir``: every loss from step 6 on equals the
    uninterrupted run's, bit for bit (dropout masks and data order continue exactly)."""
    pytest.importorskip("accelerate")
    full = _trainer_child(str(tmp_path / "a"), str(tmp_path / "out-a"), "full")
    _trainer_child(str(tmp_path / "b"), str(tmp_path / "out-b"), "full", "8", expect_kill=True)
    resumed = _trainer_child(str(tmp_path / "b"), str(tmp_path / "out-b"), "resume")
    assert full is not None and resumed is not None and sorted(resumed) == list(range(6, 13))
    assert resumed == {s: full[s] for s in resumed}


def test_the_all_extra_installs_what_trainer_needs() -> None:
    """``pip install -e '.[all,dev]'`` (the README's command) pulls accelerate, which Trainer needs."""
    import tomllib

    root = os.path.join(os.path.dirname(__file__), "..", "..", "pyproject.toml")
    with open(root, "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]

    def reached(name: str) -> set[str]:
        out: set[str] = set()
        for req in extras[name]:
            if req.startswith("persisting["):
                for sub in req[len("persisting["):-1].split(","):
                    out |= reached(sub)
            else:
                out.add(req.split(">")[0].split("=")[0].split("<")[0].strip())
        return out

    assert {"transformers", "accelerate"} <= reached("all") and {"transformers", "accelerate", "torch"} <= reached("hf")
