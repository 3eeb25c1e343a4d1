"""Helpers for the vLLM connector tests and benchmark: a tiny Llama model directory and an
engine run in a spawned child process (vLLM and Lance both want a clean process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_WORKER_MULTIPROC_METHOD": "spawn", "TOKENIZERS_PARALLELISM": "false",
       "VLLM_LOGGING_LEVEL": "WARNING"}


def make_model(path: str, *, hidden: int = 128, layers: int = 2, heads: int = 2, intermediate: int = 256,
               vocab: int = 512, seed: int = 0) -> str:
    """Write a random tiny Llama (weights + a byte-level BPE tokenizer) that vLLM can serve."""
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      intermediate_size=intermediate, vocab_size=vocab, max_position_embeddings=8192,
                      bos_token_id=0, eos_token_id=1, torch_dtype="bfloat16", initializer_range=0.3)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(path)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["the quick brown fox jumps over the lazy dog %d times" % i for i in range(200)]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(path)
    return path


def run_engine(script: str, args: dict[str, Any], *, timeout: float = 400) -> Any:
    """Run ``script`` (which reads ``ARGS`` and prints one JSON line last) in a fresh interpreter."""
    code = "import json\nARGS = json.loads(%r)\n" % json.dumps(args) + textwrap.dedent(script)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **ENV})
    if proc.returncode != 0:
        raise AssertionError(f"engine child failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# A child that starts one LLM and serves ARGS["batches"] (lists of token-id prompts), in order.
ENGINE = '''
import os, time
from vllm import LLM, SamplingParams
from vllm.config import KVTransferConfig
from vllm.inputs import TokensPrompt

def main():
    kv = None
    if ARGS.get("connector"):
        kv = KVTransferConfig(kv_connector=ARGS["connector"], kv_connector_module_path=ARGS.get("module"),
                              kv_role="kv_both", kv_connector_extra_config=ARGS.get("extra", {}))
    llm = LLM(model=ARGS["model"], dtype="bfloat16", max_model_len=ARGS.get("max_model_len", 512), enforce_eager=True,
              kv_transfer_config=kv, enable_prefix_caching=ARGS.get("prefix_caching", True),
              max_num_batched_tokens=ARGS.get("max_num_batched_tokens", 2048), seed=0)
    sp = SamplingParams(temperature=0.0, max_tokens=ARGS.get("max_tokens", 8), ignore_eos=True, logprobs=0)
    out = []
    for batch in ARGS["batches"]:
        t0 = time.perf_counter()
        res = llm.generate([TokensPrompt(prompt_token_ids=p) for p in batch], sp, use_tqdm=False)
        dt = time.perf_counter() - t0
        out.append([{"tokens": list(r.outputs[0].token_ids), "cached": r.num_cached_tokens, "seconds": dt,
                     "logprobs": [lp[t].logprob for lp, t in zip(r.outputs[0].logprobs, r.outputs[0].token_ids)]} for r in res])
    del llm
    print(json.dumps(out))

if __name__ == "__main__":
    main()
'''
