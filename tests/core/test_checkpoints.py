"""Weights and arrays: truncated, foreign and unsafe files are named (issue 20), through every loader that uses them."""
from __future__ import annotations

import collections
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import alignkit
from alignkit.core.checkpoints import (check_torch_checkpoint, load_npy, load_npz, load_safetensors,
                                       load_torch_checkpoint, load_weights, read_json)
from alignkit.core.config import configs_dir, load_config
from alignkit.core.embeddings import export_embeddings, load_embeddings
from alignkit.core.registry import ConfigError
from alignkit.core.runner import load_checkpoint, train


class ForeignDict(collections.OrderedDict):
    """A state dict whose class lives outside torch: unpickling it would import (and could run) this module."""


class Payload:
    def __reduce__(self):
        return (print, ("this ran while loading",))


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.randn(10, 10), "b": torch.arange(5)}, str(path), metadata={"format": "pt"})
    return path


def assert_names(exc: pytest.ExceptionInfo, path: Path) -> None:
    assert str(path) in str(exc.value) and "weights_only=False" not in str(exc.value)


# ------------------------------------------------------------------------------------------- safetensors


def test_safetensors_truncated_at_any_offset_is_named(weights: Path, tmp_path: Path) -> None:
    data = weights.read_bytes()
    cut = tmp_path / "cut.safetensors"
    for size, found in [(0, "fewer than its 8-byte header length"), (5, "fewer than its 8-byte header length"),
                        (8, "truncated safetensors file: its first 8 bytes declare"),
                        (60, "truncated safetensors file: its first 8 bytes declare"),
                        (len(data) - 400, r"truncated safetensors file: its header declares 2 tensors in "
                                          rf"{len(data)} bytes .* the file has {len(data) - 400}"),
                        (len(data) - 1, rf"header declares 2 tensors in {len(data)} bytes")]:
        cut.write_bytes(data[:size])
        for load in (load_safetensors, load_embeddings, load_weights):
            with pytest.raises(ValueError, match=found) as err:
                load(cut)
            assert_names(err, cut)


def test_safetensors_that_is_a_zip_or_a_pickle_is_named(tmp_path: Path) -> None:
    torch.save({"a": torch.ones(3)}, tmp_path / "zip.safetensors")
    (tmp_path / "pickle.safetensors").write_bytes(pickle.dumps({"a": 1}))
    for name, kind in [("zip", "a zip archive"), ("pickle", "a Python pickle")]:
        with pytest.raises(ValueError, match=rf"{name}\.safetensors: not a safetensors file: the file is {kind}"):
            load_safetensors(tmp_path / f"{name}.safetensors")
    (tmp_path / "text.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match=r"text\.safetensors: not a safetensors file: its 16-byte header is not"):
        load_safetensors(tmp_path / "text.safetensors")


def test_good_files_still_load(weights: Path, tmp_path: Path) -> None:
    assert set(load_safetensors(weights)) == {"a", "b"}
    export_embeddings(tmp_path / "emb.safetensors", image=torch.ones(2, 3), ids=["x", "y"])
    assert load_embeddings(tmp_path / "emb.safetensors")["ids"] == ["x", "y"]
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, tmp_path / "run.ckpt")
    assert torch.equal(load_weights(tmp_path / "run.ckpt")["w"], torch.ones(2))
    check_torch_checkpoint(tmp_path / "run.ckpt")


# ---------------------------------------------------------------------------------------- torch checkpoints


@pytest.mark.parametrize("payload, named", [(ForeignDict(w=torch.ones(2)), "ForeignDict"),
                                            ({"state_dict": {"w": Payload()}}, "object print")])
def test_checkpoint_with_a_foreign_global_is_refused(tmp_path: Path, payload, named: str, capsys) -> None:
    path = tmp_path / "foreign.ckpt"
    torch.save(payload, path)
    for load in (load_torch_checkpoint, check_torch_checkpoint, load_weights):
        with pytest.raises(ValueError, match=rf"foreign\.ckpt: refused for safety: .*{named}") as err:
            load(path)
        assert_names(err, path)
    assert "this ran" not in capsys.readouterr().out


def test_truncated_or_foreign_checkpoint_is_named(tmp_path: Path, weights: Path) -> None:
    torch.save({"state_dict": {"w": torch.ones(100)}}, tmp_path / "run.ckpt")
    data = (tmp_path / "run.ckpt").read_bytes()
    for size in (10, len(data) // 2, len(data) - 10):
        (tmp_path / "cut.ckpt").write_bytes(data[:size])
        with pytest.raises(ValueError, match=r"cut\.ckpt: not a readable torch checkpoint .*truncated") as err:
            load_torch_checkpoint(tmp_path / "cut.ckpt")
        assert_names(err, tmp_path / "cut.ckpt")
    shutil.copy(weights, tmp_path / "weights.ckpt")
    with pytest.raises(ValueError, match=r"weights\.ckpt: not a torch checkpoint: the file is a safetensors file"):
        load_torch_checkpoint(tmp_path / "weights.ckpt")
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list\.pt: holds list, not a state dict"):
        load_weights(tmp_path / "list.pt")


# -------------------------------------------------------------------------------------------- numpy files


def test_npz_and_npy_with_object_arrays_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "objects.npz", fine=np.ones(3), bad=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"objects\.npz: array 'bad' holds Python objects .*refused"):
        load_npz(tmp_path / "objects.npz")
    np.save(tmp_path / "objects.npy", np.array([1, "a"], dtype=object))
    with pytest.raises(ValueError, match=r"objects\.npy: the array holds Python objects .*refused"):
        load_npy(tmp_path / "objects.npy")
    (tmp_path / "pickle.npz").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match=r"pickle\.npz: refused for safety: the file is a Python pickle") as err:
        load_npz(tmp_path / "pickle.npz")
    assert "allow_pickle" not in str(err.value)
    np.savez(tmp_path / "good.npz", a=np.arange(4), s=np.array(["x", "y"]))
    good = (tmp_path / "good.npz").read_bytes()
    assert load_npz(tmp_path / "good.npz")["s"].tolist() == ["x", "y"]
    (tmp_path / "cut.npz").write_bytes(good[:len(good) - 30])
    with pytest.raises(ValueError, match=r"cut\.npz: not a readable \.npz archive .*truncated"):
        load_npz(tmp_path / "cut.npz")


def test_broken_json_is_named_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{\n  "model": {"towers": ')
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON at line 2 column \d+"):
        read_json(tmp_path / "config.json")


# ----------------------------------------------------------------------- the run, resume and exported model

CONFIG = configs_dir() / "core" / "shapes_demo.yaml"


def test_resume_from_a_broken_checkpoint_is_named_before_training(tmp_path: Path, shapes_tiny: Path) -> None:
    cfg = load_config(CONFIG, [f"data.params.root={shapes_tiny}", f"out_dir={tmp_path}", "name=resumed", "eval=[]"])
    torch.save({"state_dict": {"w": torch.ones(100)}}, tmp_path / "good.ckpt")
    (tmp_path / "cut.ckpt").write_bytes((tmp_path / "good.ckpt").read_bytes()[:300])
    torch.save(ForeignDict(w=torch.ones(2)), tmp_path / "foreign.ckpt")
    for name, found in [("cut", "not a readable torch checkpoint"), ("foreign", "refused for safety")]:
        with pytest.raises(ConfigError, match=rf"--resume: .*{name}\.ckpt: {found}") as err:
            train(cfg, resume=str(tmp_path / f"{name}.ckpt"))
        assert_names(err, tmp_path / f"{name}.ckpt")
        assert not (tmp_path / "resumed").exists()  # nothing started
    with pytest.raises(ValueError, match=r"foreign\.ckpt: refused for safety"):
        load_checkpoint(cfg, tmp_path / "foreign.ckpt")


def test_cli_train_resume_names_a_truncated_checkpoint(tmp_path: Path, shapes_tiny: Path, capsys) -> None:
    from alignkit.cli import main

    torch.save({"state_dict": {"w": torch.ones(100)}}, tmp_path / "good.ckpt")
    (tmp_path / "cut.ckpt").write_bytes((tmp_path / "good.ckpt").read_bytes()[:-40])
    code = main(["train", "-c", str(CONFIG), "--set", f"data.params.root={shapes_tiny}", f"out_dir={tmp_path}",
                 "name=cli", "--resume", str(tmp_path / "cut.ckpt")])
    err = capsys.readouterr().err
    assert code == 2 and f"{tmp_path / 'cut.ckpt'}: not a readable torch checkpoint" in err
    assert "weights_only=False" not in err


def test_exported_model_with_truncated_weights_is_named(exported_tiny_model: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(exported_tiny_model, tmp_path / "export"))
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    for size in (4, 100, len(data) // 2, len(data) - 1):
        weights.write_bytes(data[:size])
        with pytest.raises(ValueError, match=r"model\.safetensors: (truncated safetensors file|not a safetensors "
                                             r"file: \d+ bytes, fewer)"):
            alignkit.load(folder)
    torch.save({"a": torch.ones(2)}, weights)
    with pytest.raises(ValueError, match=r"model\.safetensors: not a safetensors file: the file is a zip archive"):
        alignkit.load(folder)
    run = exported_tiny_model.parent / "tiny"
    check_torch_checkpoint(run / "checkpoints" / "last.ckpt")  # a real Lightning checkpoint passes
