"""``voltron``: Voltron's released checkpoints (siddk/voltron-robotics ``voltron.load``) onto alignkit's
``voltron-released`` encoder (:class:`~alignkit.domains.robotics.models.voltron.released.VoltronReleasedEncoder`).

``alignkit import-weights voltron SRC --out DIR [config=MODEL-config.json] [model=v-cond|v-cond-base|v-dual|v-gen|
r-mvp] [language_model=DISTILBERT_FOLDER] [heads=H]``

Released checkpoints (``voltron.load(id)`` downloads ``cache/<id>/<id>.pt`` and ``cache/<id>/<id>-config.json``):
``v-cond``, ``v-dual``, ``v-gen`` (ViT-Small on Something-Something-v2), ``v-cond-base`` (ViT-Base) and ``r-mvp`` (the
MVP/MAE reproduction, ViT-Small). ``r-r3m-vit`` / ``r-r3m-rn50`` are not MAE encoders and are not imported.

- ``SRC``: a checkpoint as Voltron released it (``v-cond.pt`` ...: ``torch.save([model_state_dict, optimizer
  state])``; a ``{"model_state_dict": ...}`` dict or a bare state dict also do; a ``module.`` prefix is dropped), or
  the folder ``voltron.load`` caches it in (``cache/v-cond/``: ``v-cond.pt`` beside ``v-cond-config.json``).
- The variant is read from the keys (``ctx_enc_pe``: two frames; ``img_enc_token``: V-Gen; ``cls_token`` without
  ``lm.*``: R-MVP); ``model=`` is checked against it. Shapes come from the weights (width, patch, resolution, depth,
  MLP ratio, language width); the head count is not in the weights: from ``heads=``, else ``config=`` (Voltron's
  ``encoder_n_heads``), else ``width / 64`` (ViT-S 384/6, ViT-B 768/12). A ``config=`` that disagrees with the
  weights is an error naming the key.
- ``language_model=``: a local DistilBERT folder (``distilbert-base-uncased``; only its ``config.json`` and tokenizer
  are read, copied into the tower folder): Voltron reads it from the Hugging Face hub, alignkit never downloads. The
  language model's weights are the checkpoint's ``lm.*`` (taken from the folder when a checkpoint has none).
- The MAE decoder (``encoder2decoder``, ``mask_token``, ``decoder_*``, ``ctx_dec_pe``, V-Gen's ``lang2decoder`` and
  ``prefix_mask``) is not imported (a note says how many tensors); any other key that does not fit the encoder is a
  :class:`~alignkit.core.importing.WeightMismatchError` unless ``allow_partial``.

The tower (``DIR/towers/image``, modality ``image``) takes images as Voltron's preprocess gives them (recorded in
``preprocessing``: resize the short side to the resolution, centre crop, [0, 1], ImageNet mean/std); ``voltron-
pretrained`` (the robotics policies' loader, which get frames in [0, 1]) switches on the encoder's own
normalisation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from alignkit.core.checkpoints import read_json
from alignkit.core.importing import IMPORTERS, ImportedModel, ImportedTower, local_hf_folder
from alignkit.core.images import IMAGENET_MEAN, IMAGENET_STD
from alignkit.domains.robotics.models.voltron.released import released_encoder_names

MODEL_NAMES = {"v-cond": "v-cond", "v-cond-base": "v-cond", "v-dual": "v-dual", "v-dual-base": "v-dual",
               "v-gen": "v-gen", "v-gen-base": "v-gen", "r-mvp": "r-mvp"}  # voltron.load ids and Voltron's configs
DECODER_PREFIXES = ("encoder2decoder.", "mask_token", "decoder_", "ctx_dec_pe", "lang2decoder.", "prefix_mask")
RENAMES = {"img_enc_token": "img_token", "lang_enc_token": "lang_token"}  # V-Gen's names of V-Dual's tokens
LANG_TOKENS = 20  # Voltron's get_representations pads/cuts captions to 20 tokens
# Voltron model_config.json key -> (alignkit param, what the weights say) checked when config= is given
CONFIG_KEYS = {"resolution": "img_size", "patch_size": "patch_size", "encoder_depth": "depth",
               "encoder_embed_dim": "width", "language_dim": "language_dim", "in_channels": "in_channels",
               "mlp_ratio": "mlp_ratio"}


def read_voltron_checkpoint(src: Path) -> Tuple[Dict[str, Tensor], Path]:
    """The model state dict of a Voltron checkpoint (see the module docstring) and the file it came from."""
    if src.is_dir():
        files = sorted(src.glob("*.pt"))
        if len(files) != 1:
            raise ValueError(f"voltron: {src} is a folder with {len(files)} .pt files; give the checkpoint file")
        src = files[0]
    try:
        blob = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors: not a weights-only torch file
        raise ValueError(f"voltron: {src} cannot be read as a torch checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]})") from None
    if isinstance(blob, (list, tuple)) and blob and isinstance(blob[0], Mapping):
        blob = blob[0]  # [model_state_dict, optimizer state], as Voltron's trainer saved the released files
    elif isinstance(blob, Mapping) and isinstance(blob.get("model_state_dict"), Mapping):
        blob = blob["model_state_dict"]
    if not isinstance(blob, Mapping) or not any(isinstance(v, Tensor) for v in blob.values()):
        raise ValueError(f"voltron: {src} holds no state dict (expected [state_dict, optimizer] as Voltron saves, "
                         f"{{'model_state_dict': ...}} or a state dict); got {type(blob).__name__}")
    state = {str(k): v for k, v in blob.items() if isinstance(v, Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, src


def infer_variant(state: Mapping[str, Tensor], src: Path, model: Optional[str]) -> str:
    """``v-cond``, ``v-dual``, ``v-gen`` or ``r-mvp`` from the checkpoint's keys, checked against ``model=``."""
    if "patch2embed.proj.weight" not in state or "encoder_pe" not in state:
        raise ValueError(f"voltron: {src} is not a Voltron checkpoint: no patch2embed.proj.weight / encoder_pe "
                         f"(keys start {sorted(state)[:5]})")
    marks = {"v-gen": "img_enc_token", "v-dual": "ctx_enc_pe", "v-cond": "lang2encoder.weight"}
    found = next((variant for variant, key in marks.items() if key in state), "r-mvp")
    if model is not None:
        if model not in MODEL_NAMES:
            raise ValueError(f"voltron option model={model!r}: one of {', '.join(MODEL_NAMES)} (r-r3m-* are not "
                             f"Voltron encoders and are not imported)")
        if MODEL_NAMES[model] != found:
            raise ValueError(f"voltron option model={model}: {src} holds a {found} checkpoint (it has "
                             f"{marks.get(found, 'no language model')!r}); drop model= or give that model's file")
    return found


def encoder_params(state: Mapping[str, Tensor], variant: str, heads: Optional[int],
                   config: Optional[Mapping[str, Any]], config_path: Optional[Path]) -> Dict[str, Any]:
    """The ``voltron-released`` constructor params read from the weights (and ``heads`` / ``config``)."""
    proj = state["patch2embed.proj.weight"]  # (D, C, p, p)
    width, in_channels, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[-1])
    patches = int(state["encoder_pe"].shape[1]) - (1 if variant == "r-mvp" else 0)
    side = int(round(patches ** 0.5))
    depth = len({k.split(".")[1] for k in state if k.startswith("encoder_blocks.")})
    hidden_key = "encoder_blocks.0.mlp.0.project.weight" if variant != "r-mvp" else "encoder_blocks.0.mlp.0.0.weight"
    if hidden_key not in state:
        raise ValueError(f"voltron: the {variant} checkpoint has no {hidden_key}: not a Voltron "
                         f"{'RMSNorm/SwishGLU' if variant != 'r-mvp' else 'MAE (LayerNorm/GELU)'} encoder")
    hidden = int(state[hidden_key].shape[0]) // (2 if variant != "r-mvp" else 1)
    params: Dict[str, Any] = dict(variant=variant, img_size=side * patch, patch_size=patch, in_channels=in_channels,
                                  width=width, depth=depth, mlp_ratio=hidden / width)
    if variant != "r-mvp":
        params.update(language_dim=int(state["lang2encoder.weight"].shape[1]), max_lang_tokens=LANG_TOKENS)
    where = f"config={config_path}" if config_path else ""
    if config is not None:
        if config.get("use_cls_token"):
            raise ValueError(f"voltron {where}: use_cls_token true is not supported (no released model uses it)")
        for key, param in CONFIG_KEYS.items():
            if key in config and param in params and float(config[key]) != float(params[param]):
                raise ValueError(f"voltron {where}: {key} {config[key]} disagrees with the checkpoint's weights "
                                 f"({param} {params[param]}); give the config that came with this checkpoint")
    if heads is None and config is not None and "encoder_n_heads" in config:
        heads = int(config["encoder_n_heads"])
    if heads is None:
        if width % 64:
            raise ValueError(f"voltron: the head count is not in the weights and width {width} is no multiple of "
                             f"64; give heads=H or config=<the model's config.json>")
        heads = width // 64
    if width % heads:
        raise ValueError(f"voltron option heads={heads} does not divide the width {width}")
    params["heads"] = int(heads)
    return params


def _language_folder(option: Optional[str], variant: str) -> Path:
    return local_hf_folder(option, f"voltron: a {variant} checkpoint needs language_model=", "distilbert-base-uncased")


def _lm_weights_from_folder(folder: Path) -> Dict[str, Tensor]:
    from transformers import AutoModel
    try:
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    except OSError as err:
        raise ValueError(f"voltron: the checkpoint holds no language model (lm.*) and {folder} holds no weights "
                         f"either ({str(err).splitlines()[0][:160]})") from None
    return {f"lm.{k}": v for k, v in model.state_dict().items()}


def select_encoder(state: Mapping[str, Tensor], variant: str) -> Tuple[Dict[str, Tensor], List[str], List[str]]:
    """``(encoder state under the tower's keys, decoder keys, dropped keys)``: the decoder's keys are left out, as
    are old transformers' ``position_ids`` buffers; every other key is kept for the strict match to judge."""
    names = released_encoder_names(variant)
    encoder, decoder, dropped = {}, [], []
    for key, value in state.items():
        if key.startswith("lm.") and key.endswith("position_ids"):
            dropped.append(key)
        elif key.startswith(DECODER_PREFIXES) and not any(key.startswith(n) for n in names):
            decoder.append(key)
        else:
            encoder[RENAMES.get(key, key)] = value
    return encoder, sorted(decoder), dropped


@IMPORTERS.register("voltron")
def import_voltron(src: Path, *, allow_partial: bool = False, config: Optional[str] = None,
                   model: Optional[str] = None, language_model: Optional[str] = None,
                   heads: Optional[str] = None) -> ImportedModel:
    """A released Voltron checkpoint -> one ``image`` tower of ``voltron-released`` (see the module docstring)."""
    state, file = read_voltron_checkpoint(Path(src))
    variant = infer_variant(state, file, model)
    config_path = Path(config) if config else next(iter(sorted(file.parent.glob(f"{file.stem}-config.json"))), None)
    if config_path is not None and not config_path.is_file():
        raise FileNotFoundError(f"voltron option config={config}: no such file")
    cfg = read_json(config_path) if config_path is not None else None
    try:
        n_heads = None if heads is None else int(heads)
    except ValueError:
        raise ValueError(f"voltron option heads={heads!r}: give an integer") from None
    params = encoder_params(state, variant, n_heads, cfg, config_path)
    encoder_state, decoder, dropped = select_encoder(state, variant)
    notes = [f"{variant} encoder, width {params['width']}, depth {params['depth']}, {params['heads']} heads, "
             f"{params['img_size']} px in patches of {params['patch_size']}"]
    if decoder:
        notes.append(f"MAE decoder not imported ({len(decoder)} tensors: {', '.join(decoder[:4])}...)")
    if dropped:
        notes.append(f"dropped the fixed buffers {', '.join(dropped)} (an older transformers' position ids)")
    assets: Dict[str, Path] = {}
    preprocessing: Dict[str, Any] = {
        "image_size": params["img_size"], "channels": params["in_channels"], "resize": params["img_size"],
        "crop": "center", "interpolation": "bilinear", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "frames": 2 if variant in ("v-dual", "v-gen") else 1,
        "normalisation": "Voltron's preprocess: Resize(res), CenterCrop(res), [0, 1], Normalize(ImageNet)"}
    if variant != "r-mvp":
        folder = _language_folder(language_model, variant)
        if not any(k.startswith("lm.") for k in encoder_state):
            encoder_state.update(_lm_weights_from_folder(folder))
            notes.append(f"the checkpoint holds no lm.*: the language model's weights come from {folder}")
        assets["language_model"] = folder
        params["language_model"] = str(folder)
        preprocessing.update(tokenizer="language_model", context_length=LANG_TOKENS,
                             blank_caption="[CLS] then padding (Voltron's language=None)")
    elif language_model is not None:
        notes.append("r-mvp has no language model: language_model ignored")
    params["normalize"] = False  # the tower reads Voltron-preprocessed images; voltron-pretrained turns it on
    tower = ImportedTower(encoder="voltron-released", params=params, state_dict=encoder_state, head="identity",
                          preprocessing=preprocessing, assets=assets,
                          asset_files={"language_model": ["*.json", "*.txt", "*.model"]})  # lm.* are in the tower
    return ImportedModel(format="voltron", source=str(file), towers={"image": tower}, embed_dim=params["width"],
                         notes=notes, left=sorted(decoder + dropped))
