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
