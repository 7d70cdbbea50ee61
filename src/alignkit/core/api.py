"""The Python API for embedding trained models in other code, and the exported model folder.

An exported folder (``alignkit export RUN --out DIR``) holds, in the way Hugging Face models are
shared::

    config.json          {"alignkit_version", "model": <model section>, "preprocess": {...}}
    model.safetensors    the towers' and losses' weights (no optimiser, no EMA teacher)
    <modality>_text/     the tokenizer of each Hugging Face text tower (its architecture is in config.json)

``alignkit.load(DIR)`` returns an :class:`AlignedModel`::

    model = alignkit.load("exported/")
    img = model.embed("image", ["a.png", "b.png"])          # (2, D), L2-normalised
    txt = model.embed("text", ["a red circle", "a blue star"])
    model.zero_shot(["a.png"], ["circle", "star"], templates=["a {}"])
    model.retrieve(("text", ["a red circle"]), ("image", paths), k=5)
"""
from __future__ import annotations

import copy
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import Tensor

from alignkit.core.checkpoints import load_safetensors, read_json
from alignkit.core.images import PREPROCESS_KEYS, ImageTextDecoder
from alignkit.core.registry import MODELS
from alignkit.version import __version__

EmbedInput = Union[Tensor, Tuple[str, Any]]


@dataclass
class ZeroShotResult:
    """``probs`` (N, C) softmax over classes at the model's temperature, ``pred`` (N,) class indices."""
    probs: Tensor
    pred: Tensor
    class_names: List[str]

    @property
    def labels(self) -> List[str]:
        return [self.class_names[i] for i in self.pred.tolist()]


@dataclass
class RetrievalResult:
    """For each query, the ``k`` best gallery items: ``indices`` (Q, k) and cosine ``scores`` (Q, k)."""
    indices: Tensor
    scores: Tensor


def _text_encoder(tower: Any) -> Optional[Any]:
    """The Hugging Face text encoder of ``tower`` (frozen wrappers forward attributes), or None."""
    enc = tower.encoder
    return enc if hasattr(enc, "tokenizer") else None


class AlignedModel:
    """A trained alignment model with preprocessing, for use outside training.

    Args:
        module: the trained :class:`~alignkit.core.module.AlignmentModule` (any module with ``towers``).
        config: the run config (plain dict) or at least ``{"model": ..., "data": {"params": ...}}``.
    """

    def __init__(self, module: Any, config: Dict[str, Any]):
        self.module = module.eval()
        self.config = config
        params = dict((config.get("data") or {}).get("params") or {})
        self.preprocess = dict(config.get("preprocess") or {
            k: params[k] for k in PREPROCESS_KEYS if k in params})

    @property
    def modalities(self) -> List[str]:
        return list(self.module.towers.keys())

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    # ------------------------------------------------------------------ inputs
    def _image_tensor(self, item: Any) -> Tensor:
        """A path or PIL image -> (C, H, W) float tensor, decoded exactly as the training data was."""
        if isinstance(item, Image.Image):
            buffer = io.BytesIO()
            item.save(buffer, format="PNG")
            data = buffer.getvalue()
        else:
            data = Path(item).read_bytes()
        return ImageTextDecoder(**self.preprocess).image(data)

    def _batch(self, modality: str, inputs: Any) -> Any:
        if isinstance(inputs, Tensor):
            return inputs.to(self.device)
        if isinstance(inputs, str):
            inputs = [inputs]
        items = list(inputs)
        if _text_encoder(self.module.towers[modality]) is not None:  # a text, or a text as its sentences
            return [t if isinstance(t, str) else [str(s) for s in t] for t in items]
        if items and isinstance(items[0], Tensor):
            return torch.stack(items).to(self.device)
        return torch.stack([self._image_tensor(i) for i in items]).to(self.device)

    # ------------------------------------------------------------------ API
    @torch.no_grad()
    def embed(self, modality: str, inputs: Any, batch_size: int = 256) -> Tensor:
        """L2-normalised ``(N, D)`` embeddings of ``inputs`` (tensor batch, strings, image paths or PIL images)."""
        if modality not in self.module.towers:
            raise KeyError(f"model has no modality '{modality}'; it has {self.modalities}")
        if isinstance(inputs, Tensor):
            chunks = [inputs[i:i + batch_size] for i in range(0, len(inputs), batch_size)]
        else:
            items = [inputs] if isinstance(inputs, str) else list(inputs)
            chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
        outs = [self.module.embed(modality, self._batch(modality, c)).float().cpu() for c in chunks]
        return torch.cat(outs) if outs else torch.empty(0, self.module.embed_dim)

    def _as_embeddings(self, x: EmbedInput) -> Tensor:
        if isinstance(x, tuple):
            return self.embed(x[0], x[1])
        return F.normalize(x.float(), dim=-1)

    def class_embeddings(self, class_names: Sequence[str], templates: Sequence[str] = ("{}",),
                         text_modality: str = "text") -> Tensor:
        """``(C, D)``: per class the normalised mean of its prompt embeddings (CLIP's template ensemble)."""
        prompts = [t.format(c) for c in class_names for t in templates]
        z = self.embed(text_modality, prompts).view(len(class_names), len(templates), -1)
        return F.normalize(z.mean(1), dim=-1)

    def zero_shot(self, inputs: Any, class_names: Sequence[str], templates: Sequence[str] = ("{}",),
                  modality: str = "image", text_modality: str = "text") -> ZeroShotResult:
        """Classify ``inputs`` of ``modality`` among ``class_names`` by cosine to the prompt ensembles."""
        z = self._as_embeddings((modality, inputs))
        c = self.class_embeddings(class_names, templates, text_modality)
        logits = z @ c.T * 100.0
        return ZeroShotResult(probs=logits.softmax(-1), pred=logits.argmax(-1), class_names=list(class_names))

    def retrieve(self, queries: EmbedInput, gallery: EmbedInput, k: int = 5) -> RetrievalResult:
        """Top-``k`` gallery items per query by cosine; each side is embeddings or ``(modality, inputs)``."""
        q, g = self._as_embeddings(queries), self._as_embeddings(gallery)
        scores, idx = (q @ g.T).topk(min(k, len(g)), dim=-1)
        return RetrievalResult(indices=idx, scores=scores)

    # ------------------------------------------------------------------ export / load
    def save(self, out_dir: str | Path) -> Path:
        """Write the model folder (config.json, model.safetensors, text tokenizers/configs)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model_cfg = copy.deepcopy(self.config["model"])
        model_class = model_cfg.pop("name", "alignment")
        model_params = model_cfg.pop("params", {})
        model_cfg["ema"] = {"enabled": False}
        from alignkit.core.encoders.text import TextEncoder
        for name, tower in self.module.towers.items():
            enc = _text_encoder(tower)
            if not isinstance(getattr(enc, "module", enc), TextEncoder):  # other towers keep their spec (paths)
                continue
            sub = f"{name}_text"
            enc.tokenizer.save_pretrained(out / sub)
            spec = model_cfg["towers"][name]
            kept = {k: v for k, v in spec.get("params", {}).items() if k in ("pooling", "max_length", "cache",
                                                                                     "clean")}
            spec["encoder"] = "hf-text"  # the architecture from its config; the weights from model.safetensors
            spec["params"] = {**kept, "config": enc.model.config.to_diff_dict(), "tokenizer_path": sub}
        state = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()
                 if not k.startswith("teacher.")}
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        meta = {"alignkit_version": __version__, "model_class": model_class, "model_params": model_params,
                "model": model_cfg, "preprocess": self.preprocess, "modalities": self.modalities}
        (out / "config.json").write_text(json.dumps(meta, indent=2))
        return out

    @classmethod
    def load(cls, path: str | Path, map_location: str = "cpu") -> "AlignedModel":
        meta, model_cfg = _read_folder(Path(path))
        name, params = meta.get("model_class", "alignment"), meta.get("model_params", {})
        module = MODELS.get(name)(model=model_cfg, optim={}, **params)
        state = load_safetensors(Path(path) / "model.safetensors", device=map_location)
        module.load_state_dict(state, strict=True)
        return cls(module.to(map_location), {"model": {**model_cfg, "name": name, "params": params},
                                             "preprocess": meta.get("preprocess", {})})


def _read_folder(path: Path) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(config.json, its model section with the towers' asset paths made absolute)`` of a model folder."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path} is not an alignkit model folder: {cfg_file} is missing "
                                f"(create one with `alignkit export RUN --out DIR`)")
    meta = read_json(cfg_file)
    model_cfg = meta["model"]
    assets = meta.get("asset_params") or {}  # imported towers: files copied into the folder
    for tower, spec in model_cfg["towers"].items():
        params = spec.get("params", {})
        for key in {"tokenizer_path", *assets.get(tower, [])}:
            if isinstance(params.get(key), str):
                params[key] = str(path / params[key])
    return meta, model_cfg


def folder_model_config(path: str | Path) -> Dict[str, Any]:
    """The model section of a model folder as a run config writes it (``name``, ``params``, ``embed_dim``,
    ``towers``, ``objectives``, ``ema``)."""
    meta, model_cfg = _read_folder(Path(path))
    return {**model_cfg, "name": meta.get("model_class", "alignment"), "params": meta.get("model_params", {})}
