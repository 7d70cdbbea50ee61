"""Hugging Face folders in: ``hf-vision`` (one vision backbone) and ``hf-clip`` (a ``CLIPModel``: both towers).

- ``hf-vision``: a ViT / DINOv2 / Swin / ConvNeXt / ResNet folder (``config.json`` + weights, e.g.
  google/vit-base-patch16-224, facebook/dinov2-small, microsoft/swin-tiny-patch4-window7-224,
  facebook/convnext-tiny-224, microsoft/resnet-50) -> an ``image`` tower ``hf-vision`` whose params hold the
  model's config (``{"config": {...}, "pool": ...}``) and whose weights are the backbone's; a classification head
  in the folder (``classifier.*``) is left out and listed in ``left``. Preprocessing from the folder's
  ``preprocessor_config.json``.
- ``hf-clip``: a ``CLIPModel`` folder (e.g. openai/clip-vit-base-patch16) -> ``image`` (``hf-clip-vision``) and
  ``text`` (``hf-clip-text``) towers, their projections inside (head ``identity``, joint space
  ``projection_dim``), ``logit_scale`` as the ``clip`` loss's (``init_temperature = 1 / exp(logit_scale)``), the
  tokenizer copied into the text tower. A ``SiglipModel`` folder (e.g. google/siglip-base-patch16-224) gives the
  same towers over its pooled outputs and the ``siglip`` loss with its ``logit_scale`` and ``logit_bias``.

The weights are read by transformers (``from_pretrained``, which also knows the renamed keys of older
checkpoints); a weight the folder lacks or whose shape differs raises :class:`WeightMismatchError` unless
``allow_partial``.
"""
from __future__ import annotations

import atexit
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from alignkit.core.importing import IMPORTERS, ImportedModel, ImportedTower, mismatch_error



def _hf_folder(src: Path, fmt: str) -> Path:
    if not (src.is_dir() and (src / "config.json").is_file()):
        raise FileNotFoundError(f"{fmt}: {src} is not a Hugging Face folder (no config.json); download one with "
                                f"`huggingface-cli download <repo> --local-dir <folder>`")
    return src


def _check_loading(info: Dict[str, Any], src: Path, owner: str, allow_partial: bool,
                   head_prefixes: Tuple[str, ...] = ()) -> List[str]:
    """Keys transformers could not fill (missing, mis-shaped) or did not expect; raises
    :class:`WeightMismatchError` unless ``allow_partial``. Unexpected keys under ``head_prefixes`` (a task head
    beside the backbone) are only reported. Returns the keys left."""
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    misshaped = sorted(f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}"
                       for k, a, b in (info.get("mismatched_keys") or []))
    heads = [k for k in unexpected if k.startswith(head_prefixes)] if head_prefixes else []
    unexpected = [k for k in unexpected if k not in heads]
    left = sorted(heads + missing + unexpected + [m.split(":")[0] for m in misshaped])
    if (missing or unexpected or misshaped) and not allow_partial:
        raise mismatch_error(str(src), owner, missing, unexpected, misshaped,
                             "check config.json against the weights, or pass --allow-partial to keep what fits")
    return left


def _config_dict(config: Any) -> Dict[str, Any]:
    """A transformers config as the JSON-able dict ``vision_config`` rebuilds it from (``model_type`` included)."""
    fields = config.to_diff_dict()
    fields["model_type"] = config.model_type
    for key in ("architectures", "transformers_version", "_name_or_path", "dtype", "torch_dtype"):
        fields.pop(key, None)
    return fields


@IMPORTERS.register("hf-vision")
def import_hf_vision(src: Path, *, allow_partial: bool = False, pool: Optional[str] = None) -> ImportedModel:
    """A Hugging Face vision folder -> one ``image`` tower (``hf-vision``). Option ``pool``: ``pooler``, ``cls`` or
    ``mean`` (default per family, see :mod:`alignkit.core.encoders.hf_vision`)."""
    from transformers import AutoConfig, AutoModel

    from alignkit.core.encoders.hf_vision import (DEFAULT_POOL, HF_VISION_POOLS, HFVisionEncoder, model_kwargs,
                                                  read_image_processor)

    src = _hf_folder(Path(src), "hf-vision")
    if pool is not None and pool not in HF_VISION_POOLS:
        raise ValueError(f"option pool={pool!r}: one of {', '.join(HF_VISION_POOLS)}")
    config = AutoConfig.from_pretrained(str(src), local_files_only=True)
    family = str(config.model_type)
    pool = pool or DEFAULT_POOL.get(family, "pooler")
    model, info = AutoModel.from_pretrained(str(src), local_files_only=True, output_loading_info=True,
                                            ignore_mismatched_sizes=True, **model_kwargs(family, pool))
    left = _check_loading(info, src, type(model).__name__, allow_partial, head_prefixes=("classifier",))
    params = {"config": _config_dict(model.config), "pool": pool}
    tower = HFVisionEncoder(**params)  # the keys and the output width of the tower the weights go into
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    notes = [f"{family} ({type(model).__name__}), pool={pool}: output (B, {tower.output_dim}); forward_tokens "
             f"gives the patch tokens / the last map's cells"]
    heads = [k for k in left if k.startswith("classifier")]
    if heads:
        notes.append(f"the classification head ({', '.join(heads)}) was left out")
    preprocessing = read_image_processor(src)
    if not preprocessing:
        notes.append(f"{src} has no preprocessor_config.json: no preprocessing recorded")
    image = ImportedTower(encoder="hf-vision", params=params, state_dict=state, preprocessing=preprocessing)
    return ImportedModel(format="hf-vision", source=str(src), towers={"image": image},
                         embed_dim=tower.output_dim, notes=notes, left=left)


def _half_config(config: Any, half: str) -> Dict[str, Any]:
    fields = _config_dict(getattr(config, f"{half}_config"))
    if config.model_type == "clip":
        fields["projection_dim"] = int(config.projection_dim)
    return fields


@IMPORTERS.register("hf-clip")
def import_hf_clip(src: Path, *, allow_partial: bool = False, max_length: Any = None) -> ImportedModel:
    """A ``CLIPModel`` or ``SiglipModel`` folder -> ``image`` (``hf-clip-vision``) + ``text`` (``hf-clip-text``)
    towers. Option ``max_length``: the text tower's context (default: the model's ``max_position_embeddings``: 77
    for OpenAI's CLIP, 64 for SigLIP, whose texts are padded to it)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, CLIPModel, SiglipModel

    from alignkit.core.encoders.hf_vision import read_image_processor

    src = _hf_folder(Path(src), "hf-clip")
    config = AutoConfig.from_pretrained(str(src), local_files_only=True)
    if config.model_type not in ("clip", "siglip"):
        raise ValueError(f"hf-clip: {src} holds a {config.model_type!r} model; this format reads CLIPModel and "
                         f"SiglipModel folders (model_type 'clip' or 'siglip')")
    siglip = config.model_type == "siglip"
    model_class = SiglipModel if siglip else CLIPModel
    model, info = model_class.from_pretrained(str(src), local_files_only=True, output_loading_info=True,
                                              ignore_mismatched_sizes=True)
    left = _check_loading(info, src, model_class.__name__, allow_partial)
    positions = int(model.config.text_config.max_position_embeddings)
    length = positions if max_length is None else int(max_length)
    if not 1 <= length <= positions:
        raise ValueError(f"option max_length={max_length}: between 1 and the model's {positions} positions")
    state = model.state_dict()
    # a SiglipVisionModel / SiglipTextModel holds its transformer unprefixed; CLIP's halves keep vision_model. etc.
    siglip_half = {"vision_model.": "", "text_model.": ""} if siglip else {}
    vision: Dict[str, Any] = {}
    text: Dict[str, Any] = {}
    for key, value in state.items():
        for prefix, half in (("vision_model.", vision), ("visual_projection.", vision), ("text_model.", text),
                             ("text_projection.", text)):
            if key.startswith(prefix):
                half["model." + siglip_half.get(prefix, prefix) + key[len(prefix):]] = value
    tokenizer_dir = Path(tempfile.mkdtemp(prefix="alignkit-clip-tokenizer-"))  # copied into the tower by
    atexit.register(shutil.rmtree, tokenizer_dir, True)                        # import_weights, removed at exit
    AutoTokenizer.from_pretrained(str(src), local_files_only=True).save_pretrained(str(tokenizer_dir))
    scale = float(model.logit_scale.detach().float().reshape(()))
    padding = "max_length" if siglip else "longest"
    towers = {
        "image": ImportedTower(encoder="hf-clip-vision", params={"config": _half_config(model.config, "vision")},
                               state_dict=vision, preprocessing=read_image_processor(src)),
        "text": ImportedTower(encoder="hf-clip-text",
                              params={"config": _half_config(model.config, "text"), "tokenizer_path": "tokenizer",
                                      "max_length": length, "padding": padding},
                              state_dict=text, assets={"tokenizer_path": tokenizer_dir},
                              preprocessing={"tokenizer": type(model).__name__, "context_length": length,
                                             "padding": padding}),
    }
    if siglip:
        bias = float(model.logit_bias.detach().float().reshape(()))
        embed_dim = int(model.config.vision_config.hidden_size)
        loss, loss_params = "siglip", {"init_logit_scale": scale, "init_logit_bias": bias}
        loss_state = {"logit_scale": torch.tensor(scale), "logit_bias": torch.tensor(bias)}
        notes = [f"SigLIP logit_scale {scale:.4f} (t = {math.exp(scale):.3f}), logit_bias {bias:.4f}"]
    else:
        temperature = math.exp(-scale)
        embed_dim = int(model.config.projection_dim)
        loss, loss_params = "clip", {"init_temperature": temperature}
        loss_state = {"logit_scale": torch.tensor(scale)}
        notes = [f"CLIP logit_scale {scale:.4f} (temperature {temperature:.5f})"]
    return ImportedModel(format="hf-clip", source=str(src), towers=towers, embed_dim=embed_dim, loss=loss,
                         loss_params=loss_params, loss_state=loss_state, notes=notes, left=left)


__all__ = ["import_hf_vision", "import_hf_clip"]
