"""safetensors export/import: flat dotted names for Hugging Face, exact round trip for us."""

from __future__ import annotations

import numpy as np
import pytest
import torch

safetensors_torch = pytest.importorskip("safetensors.torch")

from persisting.errors import CorruptionError, InvalidRecordError, NotFoundError
from persisting.params import ParamStore


def _state() -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    return {
        "model": model.state_dict(),
        "bf16": {"w": torch.randn(4, 4).to(torch.bfloat16)},
        "rng": torch.get_rng_state(),
        "np": np.arange(4, dtype=np.uint32),
        "step": 12,
        "lr": 3e-4,
    }


def test_export_uses_flat_names_and_imports_back_exactly(store_path: str, tmp_path) -> None:
    state = _state()
    out = str(tmp_path / "model.safetensors")
    with ParamStore(store_path) as store:
        store.save(state, step=12)
        store.export_safetensors(12, out)
        flat = safetensors_torch.load_file(out)
        assert set(flat) == {"model.0.weight", "model.0.bias", "model.1.weight", "model.1.bias", "bf16.w", "rng", "np"}
        assert flat["bf16.w"].dtype == torch.bfloat16 and torch.equal(flat["model.1.weight"], state["model"]["1.weight"])
        info = store.import_safetensors(out, step=13)
        assert info.new_bytes == 0  # every tensor was already stored
        back = store.load(13)
    assert back["step"] == 12 and back["lr"] == 3e-4
    assert isinstance(back["np"], np.ndarray) and back["np"].dtype == np.uint32
    for k, v in state["model"].items():
        assert torch.equal(back["model"][k], v)
    assert torch.equal(back["rng"], state["rng"])


def test_import_foreign_file_as_flat_dict(store_path: str, tmp_path) -> None:
    path = str(tmp_path / "hf.safetensors")
    tensors = {"model.embed.weight": torch.randn(10, 4), "lm_head.weight": torch.randn(4, 10).half()}
    safetensors_torch.save_file(tensors, path)
    with ParamStore(store_path) as store:
        store.import_safetensors(path, step=0, tags=["base"])
        loaded = store.load(tag="base")
        assert set(loaded) == set(tensors)
        assert torch.equal(loaded["lm_head.weight"], tensors["lm_head.weight"])
        assert set(store.load(keys="model.*")) == {"model.embed.weight"}


def test_export_refuses_colliding_names_and_bad_files(store_path: str, tmp_path) -> None:
    with ParamStore(store_path) as store:
        store.save({"a.b": torch.ones(1), "a": {"b": torch.zeros(1)}}, step=1)
        with pytest.raises(InvalidRecordError):
            store.export_safetensors(1, str(tmp_path / "x.safetensors"))
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(b"not a safetensors file")
        with pytest.raises(CorruptionError):
            store.import_safetensors(str(bad), step=2)
        with pytest.raises(NotFoundError):
            store.import_safetensors(str(tmp_path / "missing.safetensors"), step=2)
        assert [i.step for i in store.list()] == [1]


def test_export_for_hugging_face_selects_strips_and_uses_normal_modes(store_path: str, tmp_path) -> None:
    """``keys="model", strip_prefix="model."``: only the weights, under the names
    ``from_pretrained`` expects (a real GPT-2 loads them, nothing missing or unexpected), in a
    file any user can read (0666 less the umask, as a new file would be)."""
    transformers = pytest.importorskip("transformers")
    import os

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long), labels=torch.zeros(1, 4, dtype=torch.long)).loss.backward()
    opt.step()
    with ParamStore(store_path) as store:
        store.save({"model": model.state_dict(), "optim": opt.state_dict(), "step": 1}, step=1)
        hf_dir = tmp_path / "hf"
        cfg.save_pretrained(hf_dir)
        store.export_safetensors(1, hf_dir / "model.safetensors", keys="model", strip_prefix="model.")
        old = os.umask(0o027)
        try:
            store.export_safetensors(1, tmp_path / "private.safetensors", keys="model", strip_prefix="model.")
        finally:
            os.umask(old)
        with pytest.raises(InvalidRecordError, match="strip_prefix"):
            store.export_safetensors(1, tmp_path / "bad.safetensors", strip_prefix="model.")  # optim has no prefix
        with pytest.raises(NotFoundError):
            store.export_safetensors(1, tmp_path / "none.safetensors", keys="nothing.here")
    assert os.stat(hf_dir / "model.safetensors").st_mode & 0o777 == 0o666 & ~old
    assert os.stat(tmp_path / "private.safetensors").st_mode & 0o777 == 0o640
    names = set(safetensors_torch.load_file(str(hf_dir / "model.safetensors")))
    assert names and not any(n.startswith(("model.", "optim", "state")) for n in names)
    loaded, info = transformers.GPT2LMHeadModel.from_pretrained(hf_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
