"""open_clip checkpoints (format ``"open-clip"``) onto alignkit towers.

``src``: an open_clip checkpoint (``.pt``/``.bin``/``.safetensors``; a training checkpoint's ``state_dict``
wrapper and DDP ``module.`` prefixes are removed) or a folder holding one (an hf-hub open_clip repo:
``open_clip_pytorch_model.bin`` / ``open_clip_model.safetensors`` + ``open_clip_config.json``). Options:

- ``model_config``: an open_clip model config JSON (``model_configs/ViT-B-16.json`` or a hub repo's
  ``open_clip_config.json`` with ``model_cfg`` + ``preprocess_cfg``); default: ``open_clip_config.json`` beside the
  checkpoint. What the config leaves out (widths, depths, patch size, image size, vocabulary, projections) is read
  from the tensor shapes; what shapes cannot show (attention heads, QuickGELU, pooling) comes from the config.
- ``tokenizer``: open_clip's BPE file (``bpe_simple_vocab_16e6.txt.gz``) for a text transformer, or a local Hugging
  Face folder (``config.json`` + tokenizer files, e.g. BiomedBERT's) for an ``hf_model_name`` text tower.
- ``vision_heads``: attention heads of a timm ViT trunk (BiomedCLIP) when the timm name does not say.

Towers: open_clip ``VisionTransformer`` -> ``clip-vit``; timm ``convnext_*`` in ``TimmModel`` -> ``convnext``;
timm ``vit_*`` in ``TimmModel`` -> ``clip-vit`` (``patch_bias``, eps 1e-6); ``TextTransformer`` -> ``clip-text``;
``HFTextEncoder`` -> ``hf-text`` + its projection as the tower's head (``mlp`` bias-free, or ``linear``).
``logit_scale`` ``s`` gives the CLIP loss with ``init_temperature = 1 / exp(s)``; a ``logit_bias`` gives SigLIP.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

import alignkit.core.encoders.clip_text  # noqa: F401  (registers the towers this format builds)
import alignkit.core.encoders.clip_vit  # noqa: F401
import alignkit.core.encoders.convnext  # noqa: F401  (registers convnext)
from alignkit.core.checkpoints import load_safetensors, load_torch_checkpoint, read_json
from alignkit.core.importing import ImportedModel, ImportedTower, WeightMismatchError, key_listing, local_hf_folder
from alignkit.core.registry import IMPORTERS

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CHECKPOINT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors",
                    "pytorch_model.bin")
TIMM_VIT_HEADS = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12), "large": (1024, 16), "huge": (1280, 16),
                  "giant": (1408, 16)}
TEXT_POOLERS = {"cls_last_hidden_state_pooler": "cls", "mean_pooler": "mean"}
UNSUPPORTED_VISION = ("attentional_pool", "qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner",
                      "scale_attn", "scale_fc", "act_kwargs", "norm_kwargs")


class _Checkpoint:
    """A flat state dict with the keys each tower consumed, so the rest can be reported."""

    def __init__(self, state: Dict[str, Tensor], source: str):
        self.state, self.source, self.used = state, source, set()  # type: ignore[var-annotated]

    def take(self, prefix: str) -> Dict[str, Tensor]:
        """``{key without prefix: tensor}`` of every key under ``prefix`` (marked used)."""
        found = {k[len(prefix):]: v for k, v in self.state.items() if k.startswith(prefix)}
        self.used.update(prefix + k for k in found)
        return found

    def need(self, part: Mapping[str, Tensor], key: str, where: str) -> Tensor:
        if key not in part:
            raise WeightMismatchError(f"{self.source}: the checkpoint has no '{where}{key}', which alignkit needs to "
                                      f"read the tower's architecture\n{key_listing('missing', [where + key])}\n"
                                      f"  check that the checkpoint and model_config belong together")
        return part[key]


def _count(part: Mapping[str, Tensor], pattern: str) -> int:
    """1 + the largest index ``i`` of keys matching ``pattern`` (a regex with one ``(\\d+)`` group), or 0."""
    found = [int(m.group(1)) for k in part for m in [re.match(pattern, k)] if m]
    return max(found) + 1 if found else 0


def _ratio(hidden: int, width: int) -> float:
    """An MLP ratio ``r`` with ``int(width * r) == hidden`` (the towers' rule; ``hidden / width`` can land just
    below, e.g. ``int(88 * (120 / 88)) == 119``)."""
    r = hidden / width
    while int(width * r) < hidden:
        r = math.nextafter(r, 2 * r)
    return r


def read_checkpoint(path: Path) -> Dict[str, Tensor]:
    """The flat state dict of an open_clip checkpoint file (``state_dict`` unwrapped, ``module.`` dropped)."""
    if path.suffix == ".safetensors":
        state: Any = load_safetensors(path)
    else:
        state = load_torch_checkpoint(path)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"open-clip: {path} is not an open_clip checkpoint (a state dict of tensors, or a training "
                         f"checkpoint with a 'state_dict' entry)")
    out: Dict[str, Tensor] = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            key = key[len(prefix):] if key.startswith(prefix) else key
        out[key] = value
    return out


def _locate(src: Path, model_config: Optional[str]) -> Tuple[Path, Dict[str, Any], Dict[str, Any], str]:
    """``(checkpoint file, model_cfg, preprocess_cfg, config file)``."""
    ckpt = src
    if src.is_dir():
        found = [src / n for n in CHECKPOINT_NAMES if (src / n).is_file()] + sorted(src.glob("*.pt"))
        if not found:
            raise FileNotFoundError(f"open-clip: {src} holds no checkpoint ({', '.join(CHECKPOINT_NAMES)} or *.pt); "
                                    f"give the checkpoint file as SRC")
        ckpt = found[0]
    if model_config is None:
        default = ckpt.parent / "open_clip_config.json"
        if not default.is_file():
            raise ValueError(f"open-clip: option model_config is required for {ckpt} (no open_clip_config.json beside "
                             f"it): give open_clip's model config, e.g. model_config=path/to/ViT-B-16.json (from "
                             f"open_clip/model_configs/) or the hub repo's open_clip_config.json")
        model_config = str(default)
    cfg_path = Path(model_config).expanduser()
    if not cfg_path.is_file():
        raise FileNotFoundError(f"open-clip: option model_config '{model_config}' is not a file")
    cfg = read_json(cfg_path)
    model_cfg = cfg.get("model_cfg", cfg)
    for key in ("vision_cfg", "text_cfg"):
        if not isinstance(model_cfg.get(key), Mapping):
            raise ValueError(f"open-clip: {cfg_path} has no '{key}'; is it an open_clip model config "
                             f"(embed_dim, vision_cfg, text_cfg)?")
    return ckpt, model_cfg, dict(cfg.get("preprocess_cfg") or {}), str(cfg_path)


def _image_preprocessing(size: int, preprocess_cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """open_clip's eval transform: resize (``resize_mode``: 'shortest' + center crop, 'longest' + pad, 'squash'),
    ``interpolation``, then ``(x - mean) / std`` on [0, 1] RGB."""
    return {"image_size": int(size), "channels": 3, "mean": list(preprocess_cfg.get("mean", OPENAI_MEAN)),
            "std": list(preprocess_cfg.get("std", OPENAI_STD)),
            "interpolation": preprocess_cfg.get("interpolation", "bicubic"),
            "resize_mode": preprocess_cfg.get("resize_mode", "shortest")}


def _open_clip_vit(ck: _Checkpoint, vcfg: Mapping[str, Any], quick_gelu: bool) -> Tuple[Dict[str, Any], Dict]:
    part = ck.take("visual.")
    conv = ck.need(part, "conv1.weight", "visual.")
    pos = ck.need(part, "positional_embedding", "visual.")
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    class_token = "class_embedding" in part
    grid = int(round((pos.shape[0] - int(class_token)) ** 0.5))
    layers = _count(part, r"transformer\.resblocks\.(\d+)\.")
    c_fc = ck.need(part, "transformer.resblocks.0.mlp.c_fc.weight", "visual.")
    head_width = int(vcfg.get("head_width", 64))
    ls = part.get("transformer.resblocks.0.ls_1.gamma")
    params = {"image_size": grid * patch, "patch_size": patch, "width": width, "layers": layers,
              "heads": max(1, width // head_width), "mlp_ratio": _ratio(c_fc.shape[0], width),
              "output_dim": int(part["proj"].shape[1]) if "proj" in part else None,
              "act": "quick_gelu" if quick_gelu else "gelu", "ls_init_value": float(ls[0]) if ls is not None else None,
              "pool": vcfg.get("pool_type", "tok"), "final_ln_after_pool": bool(vcfg.get("final_ln_after_pool")),
              "class_token": class_token, "ln_pre": "ln_pre.weight" in part}
    return params, part


def _timm_vit(ck: _Checkpoint, vcfg: Mapping[str, Any], embed_dim: int, heads: Optional[int]) -> Tuple[Dict, Dict]:
    part = ck.take("visual.")
    conv = ck.need(part, "trunk.patch_embed.proj.weight", "visual.")
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    name = str(vcfg["timm_model_name"])
    if heads is None:
        size = re.match(r"vit_(tiny|small|base|large|huge|giant)_", name)
        if not size or TIMM_VIT_HEADS[size.group(1)][0] != width:
            raise ValueError(f"open-clip: the attention heads of timm model '{name}' (width {width}) are unknown; "
                             f"pass the option vision_heads=N")
        heads = TIMM_VIT_HEADS[size.group(1)][1]
    if vcfg.get("timm_pool", "") not in ("", "token") or vcfg.get("timm_proj", "linear") != "linear":
        raise ValueError(f"open-clip: timm ViT towers are imported with timm_pool '' and timm_proj 'linear' "
                         f"(BiomedCLIP's); got {vcfg.get('timm_pool')!r}, {vcfg.get('timm_proj')!r}")
    renames = [(r"^trunk\.patch_embed\.proj\.", "conv1."), (r"^trunk\.norm_pre\.", "ln_pre."),
               (r"^trunk\.blocks\.(\d+)\.norm1\.", r"transformer.resblocks.\1.ln_1."),
               (r"^trunk\.blocks\.(\d+)\.norm2\.", r"transformer.resblocks.\1.ln_2."),
               (r"^trunk\.blocks\.(\d+)\.attn\.qkv\.weight", r"transformer.resblocks.\1.attn.in_proj_weight"),
               (r"^trunk\.blocks\.(\d+)\.attn\.qkv\.bias", r"transformer.resblocks.\1.attn.in_proj_bias"),
               (r"^trunk\.blocks\.(\d+)\.attn\.proj\.", r"transformer.resblocks.\1.attn.out_proj."),
               (r"^trunk\.blocks\.(\d+)\.mlp\.fc1\.", r"transformer.resblocks.\1.mlp.c_fc."),
               (r"^trunk\.blocks\.(\d+)\.mlp\.fc2\.", r"transformer.resblocks.\1.mlp.c_proj."),
               (r"^trunk\.blocks\.(\d+)\.ls(\d)\.", r"transformer.resblocks.\1.ls_\2."),
               (r"^trunk\.norm\.", "ln_post.")]
    state: Dict[str, Tensor] = {}
    for key, value in part.items():
        if key == "trunk.cls_token":
            state["class_embedding"] = value.reshape(-1)
        elif key == "trunk.pos_embed":
            state["positional_embedding"] = value.reshape(value.shape[-2], value.shape[-1])
        elif key == "head.proj.weight":
            state["proj"] = value.t().contiguous()
        else:
            new = key
            for pattern, repl in renames:
                new = re.sub(pattern, repl, new)
            state[new] = value
    pos = ck.need(state, "positional_embedding", "visual.trunk.pos_embed -> ")
    class_token = "class_embedding" in state
    grid = int(round((pos.shape[0] - int(class_token)) ** 0.5))
    c_fc = ck.need(part, "trunk.blocks.0.mlp.fc1.weight", "visual.")
    ls = part.get("trunk.blocks.0.ls1.gamma")
    params = {"image_size": grid * patch, "patch_size": patch, "width": width,
              "layers": _count(part, r"trunk\.blocks\.(\d+)\."), "heads": int(heads),
              "mlp_ratio": _ratio(c_fc.shape[0], width), "output_dim": embed_dim if "proj" in state else None,
              "ls_init_value": float(ls[0]) if ls is not None else None, "pool": "tok", "class_token": class_token,
              "ln_pre": "ln_pre.weight" in state, "patch_bias": "conv1.bias" in state, "norm_eps": 1e-6}
    return params, state


def _timm_convnext(ck: _Checkpoint, vcfg: Mapping[str, Any], embed_dim: int) -> Tuple[Dict, Dict]:
    part = ck.take("visual.")
    if "trunk.stem.2.weight" in part or "trunk.stem.0.weight" not in part:
        raise ValueError(f"open-clip: {ck.source}: only ConvNeXt's patch stem (timm 'patch' stem_type) is supported")
    pool = {"": "avg", "avg": "avg", "max": "max"}.get(str(vcfg.get("timm_pool", "avg")))
    if pool is None:
        raise ValueError(f"open-clip: ConvNeXt timm_pool {vcfg.get('timm_pool')!r} is not supported (use '', avg, max)")
    stages = _count(part, r"trunk\.stages\.(\d+)\.")
    depths = [_count(part, rf"trunk\.stages\.{i}\.blocks\.(\d+)\.") for i in range(stages)]
    dims = [int(ck.need(part, f"trunk.stages.{i}.blocks.0.conv_dw.weight", "visual.").shape[0]) for i in range(stages)]
    state = {k: (v.flatten(1) if re.search(r"\.mlp\.fc[12]\.weight$", k) and v.ndim == 4 else v)
             for k, v in part.items()}  # conv_mlp variants: 1x1 convs are linears
    if "head.proj.weight" in part:
        proj, out_dim, bias = "linear", part["head.proj.weight"].shape[0], "head.proj.bias" in part
    elif "head.mlp.fc1.weight" in part:
        proj, out_dim, bias = "mlp", part["head.mlp.fc2.weight"].shape[0], "head.mlp.fc2.bias" in part
    elif "trunk.head.fc.weight" in part:
        proj, out_dim, bias = "trunk", part["trunk.head.fc.weight"].shape[0], True
    else:
        proj, out_dim, bias = "none", dims[-1], False
    block = "trunk.stages.0.blocks.0."
    gamma = part.get(block + "gamma")
    params = {"depths": depths, "dims": dims, "output_dim": int(out_dim), "proj": proj, "proj_bias": bool(bias),
              "pool": pool, "patch_size": int(part["trunk.stem.0.weight"].shape[-1]),
              "kernel_size": int(part[block + "conv_dw.weight"].shape[-1]),
              "mlp_ratio": _ratio(ck.need(part, block + "mlp.fc1.weight", "visual.").shape[0], dims[0]),
              "ls_init_value": float(gamma[0]) if gamma is not None else None,
              "image_size": int(_side(vcfg.get("image_size", 224)))}
    return params, state


def _side(size: Any) -> int:
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def _text_transformer(ck: _Checkpoint, tcfg: Mapping[str, Any], quick_gelu: bool,
                      tokenizer: Optional[str]) -> Tuple[Dict, Dict, Dict[str, Path]]:
    prefix = "text." if any(k.startswith("text.token_embedding") for k in ck.state) else ""
    names = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection", "cls_emb")
    part = {k[len(prefix):]: v for k, v in ck.state.items()
            if k.startswith(prefix) and k[len(prefix):].split(".")[0] in names}
    ck.used.update(prefix + k for k in part)
    if "cls_emb" in part or tcfg.get("embed_cls"):
        raise ValueError("open-clip: CoCa-style text towers (embed_cls) are not supported")
    if tcfg.get("pool_type", "argmax") not in ("argmax", "first", "last"):
        raise ValueError(f"open-clip: text pool_type {tcfg.get('pool_type')!r} is not supported (argmax, first, last)")
    if (tcfg.get("tokenizer_kwargs") or {}).get("clean", "lower") != "lower":
        raise ValueError(f"open-clip: text_cfg.tokenizer_kwargs {tcfg['tokenizer_kwargs']} is not supported "
                         f"(open_clip's default 'lower' cleaning is)")
    if tcfg.get("hf_tokenizer_name"):
        raise ValueError(f"open-clip: text transformers with a Hugging Face tokenizer "
                         f"({tcfg['hf_tokenizer_name']}, e.g. SigLIP's) are not supported yet")
    if tokenizer is None:
        raise ValueError("open-clip: option tokenizer is required for the text transformer: give open_clip's BPE file, "
                         "e.g. tokenizer=.../site-packages/open_clip/bpe_simple_vocab_16e6.txt.gz (shipped with "
                         "open_clip_torch; https://github.com/mlfoundations/open_clip/tree/main/src/open_clip)")
    bpe = Path(tokenizer).expanduser()
    if not bpe.is_file():
        raise FileNotFoundError(f"open-clip: option tokenizer '{tokenizer}' is not a file (open_clip's BPE merges "
                                f"file, bpe_simple_vocab_16e6.txt.gz)")
    emb = ck.need(part, "token_embedding.weight", prefix)
    pos = ck.need(part, "positional_embedding", prefix)
    width = int(emb.shape[1])
    proj = part.get("text_projection", part.get("text_projection.weight"))
    output_dim = None if proj is None else int(proj.shape[1] if "text_projection" in part else proj.shape[0])
    ls = part.get("transformer.resblocks.0.ls_1.gamma")
    params = {"tokenizer_path": str(bpe), "context_length": int(pos.shape[0]), "vocab_size": int(emb.shape[0]),
              "width": width, "layers": _count(part, r"transformer\.resblocks\.(\d+)\."),
              "heads": int(tcfg.get("heads", 8)),
              "mlp_ratio": _ratio(ck.need(part, "transformer.resblocks.0.mlp.c_fc.weight", prefix).shape[0], width),
              "output_dim": output_dim, "act": "quick_gelu" if quick_gelu else "gelu",
              "ls_init_value": float(ls[0]) if ls is not None else None,
              "proj_bias": "text_projection.bias" in part, "pool": tcfg.get("pool_type", "argmax"),
              "causal": not tcfg.get("no_causal_mask", False)}
    return params, part, {"tokenizer_path": bpe}


def _hf_text(ck: _Checkpoint, tcfg: Mapping[str, Any], embed_dim: int, tokenizer: Optional[str]) -> ImportedTower:
    name = tcfg["hf_model_name"]
    folder = local_hf_folder(tokenizer, f"open-clip option tokenizer (the Hugging Face text tower '{name}')", name)
    pooler = tcfg.get("hf_pooler_type", "mean_pooler")
    if pooler not in TEXT_POOLERS:
        raise ValueError(f"open-clip: hf_pooler_type {pooler!r} is not supported ({', '.join(TEXT_POOLERS)})")
    config = {k: v for k, v in json.loads((folder / "config.json").read_text()).items()
              if k not in ("architectures", "transformers_version", "_name_or_path")}
    model = {k: v for k, v in ck.take("text.transformer.").items()
             if not k.endswith(("embeddings.position_ids", "embeddings.token_type_ids"))}
    model = {k: v for k, v in model.items() if not k.startswith("pooler.")}
    proj = ck.take("text.proj.")
    width = int(ck.need(model, "embeddings.word_embeddings.weight", "text.transformer.").shape[1])
    proj_type = tcfg.get("hf_proj_type", "mlp")
    if proj_type == "mlp":
        head, head_params = "mlp", {"hidden_dim": (width + embed_dim) // 2, "num_layers": 2, "activation": "gelu",
                                    "bias": False}
        head_state = {"mlp.0.weight": proj.get("0.weight"), "mlp.2.weight": proj.get("2.weight")}
    elif proj_type == "linear":
        head, head_params, head_state = "linear", {"bias": False}, {"weight": proj.get("weight")}
    else:
        head, head_params, head_state = "identity", {}, None
    if head_state is not None:
        head_state = {k: v for k, v in head_state.items() if v is not None}
    context = int(tcfg.get("context_length", config.get("max_position_embeddings", 512)))
    clean = (tcfg.get("tokenizer_kwargs") or {}).get("clean", "whitespace")
    if clean not in ("whitespace", "lower"):
        raise ValueError(f"open-clip: text_cfg.tokenizer_kwargs.clean {clean!r} is not supported (whitespace, lower)")
    return ImportedTower(
        encoder="hf-text", params={"config": config, "tokenizer_path": str(folder), "pooling": TEXT_POOLERS[pooler],
                                   "max_length": context, "clean": clean},
        state_dict={f"model.{k}": v for k, v in model.items()}, head=head, head_params=head_params,
        head_state=head_state, assets={"tokenizer_path": folder},
        preprocessing={"tokenizer": f"Hugging Face tokenizer of {name}", "clean": clean,
                       "context_length": context, "pooler": pooler})


def _vision(ck: _Checkpoint, model_cfg: Mapping[str, Any], preprocess_cfg: Mapping[str, Any],
            options: Mapping[str, Any], notes: List[str]) -> ImportedTower:
    vcfg, embed_dim = model_cfg["vision_cfg"], int(model_cfg["embed_dim"])
    used = [k for k in UNSUPPORTED_VISION if vcfg.get(k)]
    if used:
        raise ValueError(f"open-clip: vision_cfg {used} are not supported by alignkit's clip-vit")
    timm_name = vcfg.get("timm_model_name")
    if timm_name and "convnext" in str(timm_name):
        params, state = _timm_convnext(ck, vcfg, embed_dim)
        encoder = "convnext"
    elif timm_name and str(timm_name).startswith(("vit_", "deit_")):
        heads = options.get("vision_heads")
        params, state = _timm_vit(ck, vcfg, embed_dim, int(heads) if heads is not None else None)
        encoder = "clip-vit"
    elif timm_name or isinstance(vcfg.get("layers"), (list, tuple)):
        raise ValueError(f"open-clip: the image tower {timm_name or 'ModifiedResNet'} is not supported (ViT, timm "
                         f"ConvNeXt and timm ViT towers are)")
    else:
        quick = bool(model_cfg.get("quick_gelu"))
        params, state = _open_clip_vit(ck, vcfg, quick)
        encoder = "clip-vit"
        if quick:
            notes.append("QuickGELU towers (OpenAI weights): keep act: quick_gelu when fine-tuning")
        size = _side(vcfg.get("image_size", params["image_size"]))
        if size != params["image_size"]:
            raise ValueError(f"open-clip: vision_cfg.image_size {size} disagrees with the checkpoint's positional "
                             f"embedding ({params['image_size']} px at patch {params['patch_size']})")
    size = params["image_size"]
    return ImportedTower(encoder=encoder, params=params, state_dict=state,
                         preprocessing=_image_preprocessing(size, preprocess_cfg))


@IMPORTERS.register("open-clip")
def import_open_clip(src: Path, *, allow_partial: bool = False, model_config: Optional[str] = None,
                     tokenizer: Optional[str] = None, vision_heads: Optional[str] = None) -> ImportedModel:
    """An open_clip checkpoint as an :class:`~alignkit.core.importing.ImportedModel` (see the module docstring)."""
    ckpt, model_cfg, preprocess_cfg, cfg_file = _locate(Path(src), model_config)
    ck = _Checkpoint(read_checkpoint(ckpt), str(ckpt))
    notes: List[str] = [f"model config: {cfg_file}"]
    image = _vision(ck, model_cfg, preprocess_cfg, {"vision_heads": vision_heads}, notes)
    tcfg = model_cfg["text_cfg"]
    if tcfg.get("hf_model_name"):
        text = _hf_text(ck, tcfg, int(model_cfg["embed_dim"]), tokenizer)
    else:
        params, state, assets = _text_transformer(ck, tcfg, bool(model_cfg.get("quick_gelu")), tokenizer)
        text = ImportedTower(encoder="clip-text", params=params, state_dict=state, assets=assets,
                             preprocessing={"tokenizer": "open_clip SimpleTokenizer (BPE)", "clean": "lower",
                                            "context_length": params["context_length"]})
    loss, loss_params, loss_state = "clip", {}, {}
    if "logit_scale" in ck.state:
        scale = ck.state["logit_scale"].reshape(())
        ck.used.add("logit_scale")
        if "logit_bias" in ck.state:
            bias = ck.state["logit_bias"].reshape(())
            ck.used.add("logit_bias")
            loss, loss_params = "siglip", {"init_logit_scale": float(scale), "init_logit_bias": float(bias)}
            loss_state = {"logit_scale": scale.float(), "logit_bias": bias.float()}
        else:
            loss_params, loss_state = {"init_temperature": float(torch.exp(-scale))}, {"logit_scale": scale.float()}
    rest = sorted(set(ck.state) - ck.used - {"attn_mask"})
    if rest and not allow_partial:
        raise WeightMismatchError(f"{ckpt}: {len(rest)} checkpoint keys belong to no imported tower\n"
                                  f"{key_listing('unexpected', rest)}\n  check model_config, or pass --allow-partial")
    return ImportedModel(format="open-clip", source=str(ckpt), towers={"image": image, "text": text},
                         embed_dim=int(model_cfg["embed_dim"]), loss=loss, loss_params=loss_params,
                         loss_state=loss_state, notes=notes, left=rest)


__all__ = ["OPENAI_MEAN", "OPENAI_STD", "read_checkpoint", "import_open_clip"]
