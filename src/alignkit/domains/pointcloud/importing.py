"""ULIP / ULIP-2 checkpoints in: formats ``ulip-pointbert`` and ``ulip-pointnet2`` of ``alignkit import-weights``.

ULIP's ``main.py`` saves ``{'epoch', 'state_dict': model.state_dict(), 'optimizer', 'args', ...}`` with the
``module.`` prefix of DistributedDataParallel. The point tower is ``module.point_encoder.*`` and the joint space
``pc_embed = point_encoder(pc) @ module.pc_projection`` (``(pc_feat_dims, E)``: ULIP-1 ``E = 512``, ULIP-2
``E = 1280``, open_clip ViT-bigG-14's space). They become one ``points`` tower: the encoder (``pointbert`` with
``style="ulip"`` for ULIP's ``PointTransformer`` / ``PointTransformer_Colored``; ``pointnet2-ssg`` for its
``Pointnet2_Ssg``) and a bias-free ``linear`` head with ``weight = pc_projection^T``.

Architecture: widths, depth and input channels are read from the shapes. What the weights do not hold comes from
ULIP's yaml (``config=models/pointbert/<name>.yaml``: ``num_heads``, ``group_size``, ``num_group``, ``npoints``;
``trans_dim``, ``depth``, ``encoder_dims`` are checked against the shapes), from options (``num_heads=``,
``group_size=``, ``num_groups=``, ``num_points=``; PointNet++ ``npoints=512,128``, ``radii=0.2,0.4``,
``nsamples=32,64``) or ULIP's defaults (Point-BERT 6 heads, 512 groups of 32; PointNet++ as above).

Text: ``text=<open_clip checkpoint>`` (with ``text_config=<open_clip model config json>`` and
``text_tokenizer=<bpe file>``, the ``open-clip`` importer's ``model_config`` and ``tokenizer``) adds ULIP-2's text
tower through the ``open-clip`` importer; its joint space must equal ``E``. The checkpoint's other towers (ULIP-1's SLIP
text/image weights, ULIP-2's ``open_clip_model.*``) are not imported and are named in the notes.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import yaml
from torch import Tensor

from alignkit.core.importing import IMPORTERS, ImportedModel, ImportedTower

POINT_PREFIX = "point_encoder."
ULIP_POINTBERT = {"num_heads": 6, "group_size": 32, "num_groups": 512}
"""Both of ULIP's Point-BERT yamls (PointTransformer_8192point, ULIP_2_PointBERT_10k_colored_pointclouds)."""
ULIP_POINTNET2 = {"npoints": (512, 128), "radii": (0.2, 0.4), "nsamples": (32, 64)}
"""ULIP's ``Pointnet2_Ssg`` (models/pointnet2/pointnet2.py)."""
ULIP2_RGB_FILL = 0.4
"""ULIP-2 feeds uncoloured clouds (ModelNet40, ScanObjectNN) ``rgb = 0.4`` (data/dataset_3d.py)."""


def read_ulip_checkpoint(src: Path) -> Dict[str, Tensor]:
    """The ``state_dict`` of a ULIP checkpoint file without the ``module.`` prefix.

    Read with ``weights_only`` (only ``argparse.Namespace`` is allowed besides tensors: ULIP stores its ``args``)."""
    if src.is_dir():
        found = sorted(src.glob("*.pt")) + sorted(src.glob("*.pth"))
        if len(found) != 1:
            raise ValueError(f"{src}: expected one ULIP checkpoint (.pt/.pth) in the folder, found "
                             f"{[p.name for p in found]}: pass the file")
        src = found[0]
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(src, map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{src}: not a ULIP checkpoint (a dict with 'state_dict' of tensors, as ULIP's main.py "
                         "saves it)")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def _ints(value: Any, name: str) -> Tuple[int, ...]:
    return tuple(int(v) for v in _floats(value, name))


def _floats(value: Any, name: str) -> Tuple[float, ...]:
    items = value.split(",") if isinstance(value, str) else (value if isinstance(value, (list, tuple)) else [value])
    try:
        return tuple(float(str(v).strip()) for v in items if str(v).strip())
    except ValueError:
        raise ValueError(f"option {name}={value!r}: expected numbers separated by commas") from None


def read_ulip_yaml(path: Any) -> Dict[str, Any]:
    """The ``model`` section of ULIP's PointTransformer yaml, plus ``npoints``."""
    file = Path(str(path))
    if not file.is_file():
        raise FileNotFoundError(f"option config={path}: no such file (ULIP's models/pointbert/*.yaml)")
    doc = yaml.safe_load(file.read_text()) or {}
    if not isinstance(doc.get("model"), dict):
        raise ValueError(f"{file}: no 'model' section (expected ULIP's PointTransformer yaml)")
    return {**doc["model"], **({"npoints": doc["npoints"]} if "npoints" in doc else {})}


def _need(state: Dict[str, Tensor], key: str, src: Path) -> Tensor:
    if key not in state:
        raise ValueError(f"{src}: key 'module.{key}' is missing: not a ULIP checkpoint of this format (check the "
                         "format name: ulip-pointbert or ulip-pointnet2)")
    return state[key]


def _split(state: Dict[str, Tensor]) -> Tuple[Dict[str, Tensor], List[str]]:
    """Point-encoder entries (prefix removed) and the other keys (not pc_projection/logit_scale)."""
    point = {k[len(POINT_PREFIX):]: v for k, v in state.items() if k.startswith(POINT_PREFIX)}
    other = sorted(k for k in state if not k.startswith(POINT_PREFIX) and k not in ("pc_projection", "logit_scale"))
    return point, other


def _check_options(options: Dict[str, Any], known: Sequence[str], fmt: str) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"{fmt}: unknown option '{unknown[0]}'; known: {', '.join(known)}")


# ------------------------------------------------------------------------------------------------ Point-BERT
def map_pointbert_keys(point: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """ULIP ``PointTransformer`` keys -> alignkit ``pointbert`` (``style="ulip"``) keys; 1x1-conv weights
    ``(out, in, 1)`` -> ``(out, in)``. Keys that match no rule pass unchanged (a mismatch error then names them)."""
    rules = [(r"^encoder\.first_conv\.", "patch_embed.first."), (r"^encoder\.second_conv\.", "patch_embed.second."),
             (r"^reduce_dim\.", "to_token."), (r"^blocks\.blocks\.", "blocks.")]
    out = {}
    for key, value in point.items():
        new = key
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        if new.startswith("patch_embed.") and new.endswith(".weight") and value.dim() == 3:
            value = value.squeeze(-1)
        out[new] = value
    return out


def pointbert_params(point: Dict[str, Tensor], src: Path, cfg: Dict[str, Any],
                     options: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """``pointbert`` constructor params from the shapes, ULIP's yaml ``cfg`` and the options; and notes."""
    first0, first3 = _need(point, "encoder.first_conv.0.weight", src), _need(point, "encoder.first_conv.3.weight", src)
    second0 = _need(point, "encoder.second_conv.0.weight", src)
    second3 = _need(point, "encoder.second_conv.3.weight", src)
    width = int(_need(point, "cls_token", src).shape[-1])
    depth = len({k.split(".")[2] for k in point if k.startswith("blocks.blocks.")})
    hidden = int(_need(point, "blocks.blocks.0.mlp.fc1.weight", src).shape[0])
    shapes = {"trans_dim": width, "depth": depth, "encoder_dims": int(second3.shape[0])}
    for key, value in shapes.items():
        if key in cfg and int(cfg[key]) != value:
            raise ValueError(f"{options.get('config')}: model.{key} = {cfg[key]} but the checkpoint {src} has {value}: "
                             "pass the yaml the checkpoint was trained with")
    notes = []
    picked = {}
    for name, yaml_key in (("num_heads", "num_heads"), ("group_size", "group_size"), ("num_groups", "num_group")):
        if name in options:
            picked[name] = _ints(options[name], name)[0]
        elif yaml_key in cfg:
            picked[name] = int(cfg[yaml_key])
        else:
            picked[name] = ULIP_POINTBERT[name]
            notes.append(f"{name}={picked[name]}: ULIP's value, not stored in the checkpoint (pass config= or "
                         f"{name}= if the model was trained otherwise)")
    in_features = int(first0.shape[1]) - 3
    params = {"in_features": in_features, **picked, "embed_dim": width, "depth": depth,
              "mlp_ratio": hidden / width, "dropout": 0.0,
              "patch_mlp1": [int(first0.shape[0]), int(first3.shape[0])],
              "patch_mlp2": [int(second0.shape[0]), int(second3.shape[0])], "dense_mlp": [], "style": "ulip"}
    if in_features == 3:
        params["feature_fill"] = ULIP2_RGB_FILL
    return params, notes


# ------------------------------------------------------------------------------------------------ PointNet++
def _levels(point: Dict[str, Tensor]) -> List[int]:
    return sorted({int(m.group(1)) for k in point for m in [re.match(r"^sa(\d+)\.mlp_convs\.", k)] if m})


def _widths(point: Dict[str, Tensor], prefix: str) -> List[int]:
    js = sorted({int(m.group(1)) for k in point for m in [re.match(rf"^{prefix}\.(\d+)\.weight$", k)] if m})
    return [int(point[f"{prefix}.{j}.weight"].shape[0]) for j in js]


def map_pointnet2_keys(point: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """ULIP ``Pointnet2_Ssg`` keys -> alignkit ``pointnet2-ssg`` keys: ``sa{i}.mlp_convs.{j}`` ->
    ``levels.{i-1}.mlp.{3j}`` (``(out, in, 1, 1)`` -> ``(out, in)``), ``sa{i}.mlp_bns.{j}`` ->
    ``levels.{i-1}.mlp.{3j+1}``, ``fc{k}`` / ``bn{k}`` -> ``global_head.{4(k-1)}`` / ``.{4(k-1)+1}``."""
    out = {}
    for key, value in point.items():
        new = key
        m = re.match(r"^sa(\d+)\.mlp_(convs|bns)\.(\d+)\.(.+)$", key)
        if m:
            index = 3 * int(m.group(3)) + (0 if m.group(2) == "convs" else 1)
            new = f"levels.{int(m.group(1)) - 1}.mlp.{index}.{m.group(4)}"
            if m.group(2) == "convs" and value.dim() == 4:
                value = value.flatten(1)
        m = re.match(r"^(fc|bn)(\d+)\.(.+)$", key)
        if m:
            new = f"global_head.{4 * (int(m.group(2)) - 1) + (0 if m.group(1) == 'fc' else 1)}.{m.group(3)}"
        out[new] = value
    return out


def pointnet2_params(point: Dict[str, Tensor], src: Path, options: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """``pointnet2-ssg`` constructor params from the shapes and the options; and notes."""
    levels = _levels(point)
    if len(levels) < 2:
        raise ValueError(f"{src}: no 'module.point_encoder.sa<i>.mlp_convs.*' keys of two levels or more: not ULIP's "
                         "Pointnet2_Ssg (check the format: ulip-pointnet2 or ulip-pointbert)")
    mlps = [_widths(point, f"sa{i}.mlp_convs") for i in levels]
    heads = sorted({int(m.group(1)) for k in point for m in [re.match(r"^fc(\d+)\.weight$", k)] if m})
    notes = []
    geometry = {}
    for name, default in ULIP_POINTNET2.items():
        if name in options:
            geometry[name] = (_floats if name == "radii" else _ints)(options[name], name)
        else:
            geometry[name] = default
            notes.append(f"{name}={list(default)}: ULIP's value, not stored in the checkpoint")
        if len(geometry[name]) != len(levels) - 1:
            raise ValueError(f"option {name}: needs {len(levels) - 1} values (one per set-abstraction level of {src}); "
                             f"got {list(geometry[name])}")
    params = {"in_features": int(point[f"sa{levels[0]}.mlp_convs.0.weight"].shape[1]) - 3,
              "npoints": list(geometry["npoints"]), "radii": list(geometry["radii"]),
              "nsamples": list(geometry["nsamples"]), "mlps": mlps[:-1], "global_mlp": mlps[-1], "fp_mlps": [],
              "mlp_bias": f"sa{levels[0]}.mlp_convs.0.bias" in point, "scale_by_radius": False,
              "head_mlp": [int(point[f"fc{k}.weight"].shape[0]) for k in heads], "head_dropout": 0.4}
    return params, notes


# ------------------------------------------------------------------------------------------------ the importers
def _open_clip_text(text: str, text_config: Optional[str], text_tokenizer: Optional[str],
                    allow_partial: bool) -> Tuple[ImportedTower, ImportedModel]:
    """The ``text`` tower of an open_clip checkpoint, imported by the ``open-clip`` importer (its options
    ``model_config`` and ``tokenizer``)."""
    importer = IMPORTERS.get("open-clip")
    options = {k: v for k, v in (("model_config", text_config), ("tokenizer", text_tokenizer)) if v}
    imported = importer(Path(text), allow_partial=allow_partial, **options)
    if "text" not in imported.towers:
        raise ValueError(f"option text={text}: the open_clip checkpoint has no text tower "
                         f"(towers: {sorted(imported.towers)})")
    return imported.towers["text"], imported


def _ulip_model(fmt: str, src: Path, tower: ImportedTower, projection: Tensor, state: Dict[str, Tensor],
                other: List[str], notes: List[str], text: Dict[str, Optional[str]],
                allow_partial: bool) -> ImportedModel:
    embed_dim = int(projection.shape[1])
    towers = {"points": tower}
    if other:
        notes.append(f"not imported: {len(other)} keys of the checkpoint's other towers ({', '.join(other[:3])}"
                     f"{', ...' if len(other) > 3 else ''}); ULIP-2's text tower comes from open_clip: text=...")
    loss_state: Dict[str, Tensor] = {}
    if text.get("text"):
        text_tower, text_model = _open_clip_text(text["text"], text.get("text_config"), text.get("text_tokenizer"),
                                                 allow_partial)
        if text_model.embed_dim != embed_dim:
            raise ValueError(f"option text={text['text']}: its joint space is {text_model.embed_dim}-d but {src}'s "
                             f"pc_projection maps to {embed_dim}: pair the checkpoint with the open_clip model it "
                             "was aligned to (ULIP-2: ViT-bigG-14, 1280)")
        towers["text"] = text_tower
        notes += [f"text (open-clip): {n}" for n in text_model.notes]
        if "logit_scale" in state:
            loss_state["logit_scale"] = state["logit_scale"].reshape(())
    return ImportedModel(format=fmt, source=str(src), towers=towers, embed_dim=embed_dim, loss="clip",
                         loss_state=loss_state, notes=notes)


def _point_tower(encoder: str, params: Dict[str, Any], state: Dict[str, Tensor], projection: Tensor,
                 preprocessing: Dict[str, Any]) -> ImportedTower:
    return ImportedTower(encoder=encoder, params=params, state_dict=state, head="linear",
                         head_params={"bias": False}, head_state={"weight": projection.t().contiguous()},
                         preprocessing=preprocessing)


def _preprocessing(num_points: int, in_features: int) -> Dict[str, Any]:
    return {"num_points": num_points, "sampling": "fps",
            "normalization": "unit_sphere (xyz - centroid) / max |xyz - centroid|",
            "features": "xyz+rgb" if in_features == 3 else ("xyz" if in_features == 0 else f"xyz+{in_features}"),
            **({"rgb_for_uncoloured": ULIP2_RGB_FILL} if in_features == 3 else {})}


@IMPORTERS.register("ulip-pointbert")
def import_ulip_pointbert(src: Path, *, allow_partial: bool = False, config: Optional[str] = None,
                          text: Optional[str] = None, text_config: Optional[str] = None,
                          text_tokenizer: Optional[str] = None, **options: Any) -> ImportedModel:
    """ULIP-1 Point-BERT (xyz, 8k points) / ULIP-2 Point-BERT (xyz+rgb, 10k points) -> ``points`` tower."""
    _check_options(options, ("num_heads", "group_size", "num_groups", "num_points"), "ulip-pointbert")
    state = read_ulip_checkpoint(Path(src))
    point, other = _split(state)
    projection = _need(state, "pc_projection", Path(src))
    cfg = read_ulip_yaml(config) if config else {}
    params, notes = pointbert_params(point, Path(src), cfg, {**options, "config": config})
    colored = params["in_features"] == 3
    num_points = (_ints(options["num_points"], "num_points")[0] if "num_points" in options
                  else int(cfg.get("npoints", 10000 if colored else 8192)))
    if colored:
        notes.append("xyz+rgb model: clouds without colour get rgb = 0.4 as in ULIP-2's evaluation (feature_fill)")
    tower = _point_tower("pointbert", params, map_pointbert_keys(point), projection,
                         _preprocessing(num_points, params["in_features"]))
    return _ulip_model("ulip-pointbert", Path(src), tower, projection, state, other, notes,
                       {"text": text, "text_config": text_config, "text_tokenizer": text_tokenizer}, allow_partial)


@IMPORTERS.register("ulip-pointnet2")
def import_ulip_pointnet2(src: Path, *, allow_partial: bool = False, text: Optional[str] = None,
                          text_config: Optional[str] = None, text_tokenizer: Optional[str] = None,
                          **options: Any) -> ImportedModel:
    """ULIP-1 PointNet++ ssg (xyz, 8k points) -> ``points`` tower."""
    _check_options(options, ("npoints", "radii", "nsamples", "num_points"), "ulip-pointnet2")
    state = read_ulip_checkpoint(Path(src))
    point, other = _split(state)
    projection = _need(state, "pc_projection", Path(src))
    params, notes = pointnet2_params(point, Path(src), options)
    num_points = _ints(options["num_points"], "num_points")[0] if "num_points" in options else 8192
    tower = _point_tower("pointnet2-ssg", params, map_pointnet2_keys(point), projection,
                         _preprocessing(num_points, params["in_features"]))
    notes.append("FPS starts at point 0 (ULIP's PyTorch FPS starts at a random point)")
    return _ulip_model("ulip-pointnet2", Path(src), tower, projection, state, other, notes,
                       {"text": text, "text_config": text_config, "text_tokenizer": text_tokenizer}, allow_partial)


__all__ = ["read_ulip_checkpoint", "read_ulip_yaml", "map_pointbert_keys", "map_pointnet2_keys",
           "pointbert_params", "pointnet2_params", "import_ulip_pointbert", "import_ulip_pointnet2"]
