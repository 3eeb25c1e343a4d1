"""A child process for tests/params/test_hf.py: a tiny GPT-2 (dropout on) trained by a real
``transformers.Trainer`` with a ParamStoreCallback.

usage: hf_trainer_child.py STORE OUT MODE [KILL_AT]
MODE ``full`` trains from scratch (SIGKILLing itself after step KILL_AT when given);
``resume`` resumes from the store's newest checkpoint. The last stdout line is JSON:
``{"losses": {step: loss}}``.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from persisting.params import ParamStore
from persisting.params.hf import ParamStoreCallback

MAX_STEPS, EVERY = 12, 5


class Record(TrainerCallback):
    """Collect per-step losses; optionally die by SIGKILL right after a step (its save included)."""

    def __init__(self, kill_at: int | None) -> None:
        self.kill_at, self.losses = kill_at, {}

    def on_log(self, args, state, control, logs=None, **kw):  # type: ignore[no-untyped-def]
        if logs and "loss" in logs:
            self.losses[state.global_step] = logs["loss"]

    def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
        if state.global_step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    store_path, out, mode = sys.argv[1:4]
    kill_at = int(sys.argv[4]) if len(sys.argv) > 4 else None
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=128, n_positions=32,
                                       bos_token_id=0, eos_token_id=0))
    assert model.config.resid_pdrop > 0  # dropout on: resume must restore the RNG exactly
    gen = torch.Generator().manual_seed(1)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 128, (64, 16), generator=gen)]
    args = TrainingArguments(output_dir=out, max_steps=MAX_STEPS, per_device_train_batch_size=4, logging_steps=1,
                             save_strategy="no", report_to=[], use_cpu=True, seed=0, learning_rate=1e-3,
                             dataloader_num_workers=0, disable_tqdm=True)
    store = ParamStore(store_path)
    cb, rec = ParamStoreCallback(store, every_n_steps=EVERY), Record(kill_at)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[cb, rec])
    resume = cb.checkpoint_dir(out) if mode == "resume" else None
    trainer.train(resume_from_checkpoint=resume)
    store.close()
    print(json.dumps({"losses": rec.losses}))


if __name__ == "__main__":
    main()
