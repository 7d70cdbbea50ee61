"""Text4Point (Huang et al., "Joint Representation Learning for Text and 3D Point Cloud", arXiv 2301.07584, 2023),
built from the paper (which points to code at LeapLabTHU/Text4Point).

Two stages on RGB-D frames (:mod:`alignkit.domains.pointcloud.rgbd.dataset` samples: ``points (B, N, 6)``,
``pixels (B, N, 2)`` ``(row, col)`` of each point, ``image (B, 3, H, W)``, ``seg (B, N)``, ``class_names``).

**Pretraining** (:class:`Text4PointPretraining`, ``"text4point-pretrain"``): dense image-point contrast on
the pixel correspondences of the back-projection. Per frame ``M = num_pairs`` of its ``N`` points are drawn;
point ``i`` has the dense point feature ``f_i`` (the point tower's ``forward_dense``) and the feature ``g_i``
of its pixel in the image tower's dense map (:func:`sample_pixel_features`). With projections ``P``, ``Q``

    L_dense = clip(normalize(P f), normalize(Q g))   over the B * M pairs of the batch

(the core ``LOSSES`` entry ``dense_loss``, default the symmetric InfoNCE ``"clip"``), added with weight
``dense_weight`` to any configured global objectives. In the paper the image tower is CLIP's (frozen,
already aligned with text), so the points inherit the text alignment; here any ``ENCODERS`` image tower
with ``forward_dense`` (e.g. ``"monai-basicunet"``) can be trained or frozen.

**Segmentation fine-tuning** (:class:`Text4PointSegmentation`, ``"text4point-seg"``): the point tower
(optionally initialised from a pretraining checkpoint) feeds the :class:`TextQueryingModule`, whose
queries are the dense point features and whose keys/values are the frozen text tower's embeddings of the
label set (class names in prompt templates); it returns text-aware point features and per-point class
logits ``s cos(P f'_i, Q t_c)``. The loss is the per-point cross-entropy with unlabeled points ignored.
No image is needed at this stage.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.core.checkpoints import load_weights
from alignkit.core.encoders.base import FrozenTower
from alignkit.core.encoders.image import Channels, FeatureMapEncoder, Pool, SpatialDims
from alignkit.core.metrics import class_embeddings
from alignkit.core.losses import logit_multiplier
from alignkit.core.module import AlignmentModule, Tower
from alignkit.core.params import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Range
from alignkit.core.registry import ENCODERS, HEADS, LOSSES, MODELS, ConfigError
from alignkit.domains.pointcloud.rgbd.files import IGNORE_INDEX

PIXELS_KEY = "pixels"
SEG_KEY = "seg"
CLASS_NAMES_KEY = "class_names"
Dropout = Annotated[float, Range(ge=0, lt=1)]


# --------------------------------------------------------------------------- dense image tower


@ENCODERS.register("monai-basicunet")
class BasicUNetEncoder(FeatureMapEncoder):
    """MONAI's ``BasicUNet`` as a dense image feature extractor: ``(B, C, H, W) -> (B, dense_dim, H, W)``.

    ``features``: the six widths of BasicUNet (four down-sampling stages, the last entry is the width of
    the final up-sampling stage); its output layer gives ``dense_dim`` channels at full resolution (inputs
    of at least ``MIN_SIZE = 32`` px per side; BasicUNet pads odd sizes). ``forward_dense`` is that map;
    ``forward`` pools it (``output_dim = dense_dim``, x2 for ``avgmax``), ``forward_tokens`` flattens it to
    ``(B, H W, dense_dim)``.
    """

    def __init__(self, in_channels: Channels = 3, dense_dim: Annotated[int, AT_LEAST_ONE] = 32,
                 features: Sequence[Annotated[int, AT_LEAST_ONE]] = (16, 16, 32, 64, 128, 16),
                 spatial_dims: SpatialDims = 2, pool: Pool = "avg", dropout: Dropout = 0.0):
        from monai.networks.nets import BasicUNet

        if len(features) != 6:
            raise ConfigError(f"monai-basicunet features needs 6 widths (BasicUNet), got {list(features)}")
        super().__init__(spatial_dims, in_channels, pool)
        self.net = BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=dense_dim,
                             features=tuple(int(f) for f in features), dropout=dropout)
        self.map_channels = self.dense_dim = int(dense_dim)

    MIN_SIZE = 32  # four 2x down-samplings leave 2 x 2 cells, the least instance norm accepts

    def feature_map(self, x: Tensor) -> Tensor:
        if min(x.shape[2:]) < self.MIN_SIZE:
            raise ValueError(f"monai-basicunet needs images of at least {self.MIN_SIZE} px per side; got "
                             f"{tuple(x.shape[2:])}")
        return self.net(x)

    def forward_dense(self, x: Tensor) -> Tensor:
        """``(B, dense_dim, H, W)`` per-pixel features."""
        return self._map(x)


# --------------------------------------------------------------------------- correspondences


def sample_pixel_features(feature_map: Tensor, pixels: Tensor, image_size: Tuple[int, int]) -> Tensor:
    """Features ``(B, M, C)`` of a dense map ``(B, C, h, w)`` at ``pixels (B, M, 2)`` ``(row, col)`` of an
    ``image_size = (H, W)`` image.

    The map is taken to cover the image evenly (pixel centres at ``(k + 0.5) / size``), and sampled
    bilinearly at ``((col + 0.5) / W, (row + 0.5) / H)``, clamped to the border cells; for ``h, w = H, W``
    this is the exact lookup ``feature_map[b, :, row, col]``.
    """
    if feature_map.ndim != 4 or pixels.ndim != 3 or pixels.shape[-1] != 2 or pixels.shape[0] != feature_map.shape[0]:
        raise ValueError(f"expected a map (B, C, h, w) and pixels (B, M, 2); got {tuple(feature_map.shape)} and "
                         f"{tuple(pixels.shape)}")
    height, width = image_size
    rows, cols = pixels[..., 0].to(feature_map.dtype), pixels[..., 1].to(feature_map.dtype)
    grid = torch.stack([(cols + 0.5) / width * 2 - 1, (rows + 0.5) / height * 2 - 1], dim=-1)
    sampled = F.grid_sample(feature_map, grid.unsqueeze(1), mode="bilinear", padding_mode="border",
                            align_corners=False)  # (B, C, 1, M)
    return sampled.squeeze(2).transpose(1, 2)


def sample_pairs(batch_size: int, num_points: int, num_pairs: int, device: torch.device) -> Tensor:
    """``(B, min(M, N))`` distinct point indices per frame, uniformly at random (``torch`` RNG)."""
    m = min(num_pairs, num_points)
    return torch.rand(batch_size, num_points, device=device).argsort(dim=1)[:, :m]


def _tower_dense(tower: Tower, inputs: Tensor, owner: str) -> Tensor:
    """The tower encoder's ``forward_dense(inputs)``, without gradients when the tower is frozen."""
    if not hasattr(tower.encoder, "forward_dense"):
        inner = tower.encoder.module if isinstance(tower.encoder, FrozenTower) else tower.encoder
        raise ConfigError(f"{owner} needs an encoder with forward_dense (per-point / per-pixel features); "
                          f"{type(inner).__name__} has none")
    with torch.set_grad_enabled(torch.is_grad_enabled() and not tower.frozen):
        return tower.encoder.forward_dense(inputs)


def _dense_dim(tower: Tower, modality: str) -> int:
    dim = getattr(tower.encoder, "dense_dim", None)
    if dim is None:
        raise ConfigError(f"text4point: the '{modality}' encoder has no dense_dim / forward_dense; use an encoder "
                          "with per-point or per-pixel features (pointnet2-ssg, pointbert, monai-basicunet)")
    return int(dim)


def _check_towers(towers: nn.ModuleDict, names: Dict[str, str], model: str) -> None:
    for param, name in names.items():
        if name not in towers:
            raise ConfigError(f"{model}: model.towers has no '{name}' tower (towers: {', '.join(towers)}); set "
                              f"model.params.{param} to the modality holding it")


def _metric(value: Tensor) -> Tensor:
    return value.detach().float()


@dataclass
class DenseContrastOutput:
    """The dense term: ``loss`` (scalar), the projected pairs ``points``, ``pixels`` ``(B * M, D)`` (normalised),
    ``accuracy``: the fraction of points whose most similar pixel among the pairs is their own, and the dense
    loss's ``metrics``."""

    loss: Tensor
    points: Tensor
    pixels: Tensor
    accuracy: Tensor
    metrics: Dict[str, Tensor]


@MODELS.register("text4point-pretrain")
class Text4PointPretraining(AlignmentModule):
    """Text4Point pretraining: dense point-pixel contrast plus the configured global objectives (module docstring).

    Args:
        model, optim: as :class:`~alignkit.core.module.AlignmentModule`; ``model.towers`` holds the point
            tower (encoder with ``forward_dense``, e.g. ``pointnet2-ssg``) and the image tower (encoder with
            ``forward_dense`` giving ``(B, C, h, w)``, e.g. ``monai-basicunet``). ``objectives`` may be empty.
        points, image: the modalities of the two towers.
        num_pairs: ``M`` correspondences drawn per frame (all ``N`` points if fewer).
        dense_dim: width of the shared space of the dense projections ``P``, ``Q`` (heads from ``HEADS``,
            ``dense_head`` with ``dense_head_params``).
        dense_loss, dense_loss_params: the ``LOSSES`` entry of the dense term (default ``clip``).
        dense_weight: weight of the dense term in the total loss.

    Batches need ``pixels (B, N, 2)`` beside the point and image inputs. Logged: ``dense/loss``,
    ``dense/accuracy`` and the dense loss's metrics (``dense/logit_scale``).
    """

    def __init__(self, model: Dict[str, Any], optim: Optional[Dict[str, Any]] = None, points: str = "points",
                 image: str = "image", num_pairs: Annotated[int, Range(ge=2)] = 256,
                 dense_dim: Annotated[int, AT_LEAST_ONE] = 64, dense_head: str = "linear",
                 dense_head_params: Optional[Dict[str, Any]] = None, dense_loss: str = "clip",
                 dense_loss_params: Optional[Dict[str, Any]] = None,
                 dense_weight: Annotated[float, NON_NEGATIVE] = 1.0):
        super().__init__(model, optim)
        _check_towers(self.towers, {"points": points, "image": image}, "text4point-pretrain")
        if num_pairs < 2 or dense_weight < 0:
            raise ConfigError(f"text4point-pretrain needs num_pairs >= 2 and dense_weight >= 0; got {num_pairs}, "
                              f"{dense_weight}")
        self.point_modality, self.image_modality = points, image
        self.num_pairs, self.dense_weight = int(num_pairs), float(dense_weight)
        point_dim, pixel_dim = (_dense_dim(self.towers[m], m) for m in (points, image))
        head_params = dict(dense_head_params or {})
        self.point_proj = HEADS.build(dense_head, where="model.params.dense_head_params", in_dim=point_dim,
                                      out_dim=dense_dim, **head_params)
        self.pixel_proj = HEADS.build(dense_head, where="model.params.dense_head_params", in_dim=pixel_dim,
                                      out_dim=dense_dim, **head_params)
        self.dense_loss = LOSSES.build(dense_loss, where="model.params.dense_loss_params",
                                       **dict(dense_loss_params or {}))

    def dense_contrast(self, batch: Dict[str, Any]) -> DenseContrastOutput:
        """The dense term on one batch (see the module docstring)."""
        points = batch[self.input_key(self.point_modality)]
        images = batch[self.input_key(self.image_modality)]
        pixels = batch[PIXELS_KEY]
        if pixels.shape[:2] != points.shape[:2]:
            raise ValueError(f"text4point: pixels {tuple(pixels.shape)} must give one (row, col) per point of "
                             f"points {tuple(points.shape)}")
        idx = sample_pairs(points.shape[0], points.shape[1], self.num_pairs, points.device)
        point_feats = _tower_dense(self.towers[self.point_modality], points, "text4point-pretrain points")
        point_feats = point_feats.gather(1, idx.unsqueeze(-1).expand(-1, -1, point_feats.shape[-1]))
        pixel_map = _tower_dense(self.towers[self.image_modality], images, "text4point-pretrain image")
        pair_pixels = pixels.gather(1, idx.unsqueeze(-1).expand(-1, -1, 2))
        pixel_feats = sample_pixel_features(pixel_map, pair_pixels, (images.shape[-2], images.shape[-1]))
        a = F.normalize(self.point_proj(point_feats.flatten(0, 1).float()), dim=-1)
        b = F.normalize(self.pixel_proj(pixel_feats.flatten(0, 1).float()), dim=-1)
        res = self.dense_loss(a, b)
        with torch.no_grad():
            accuracy = ((a @ b.T).argmax(1) == torch.arange(len(a), device=a.device)).float().mean()
        return DenseContrastOutput(res.loss, a, b, accuracy, res.metrics)

    def compute_loss(self, batch: Dict[str, Any]) -> Dict[str, Tensor]:
        """``sum_k w_k loss_k + dense_weight * L_dense``; returns ``{"loss", "dense/loss", "dense/accuracy", ...}``."""
        out = super().compute_loss(batch)
        dense = self.dense_contrast(batch)
        out["loss"] = out["loss"] + self.dense_weight * dense.loss
        out["dense/loss"] = _metric(dense.loss)
        out["dense/accuracy"] = dense.accuracy
        out.update({f"dense/{k}": _metric(torch.as_tensor(v)) for k, v in dense.metrics.items()})
        return out


# --------------------------------------------------------------------------- text querying module


@dataclass
class TextQueryOutput:
    """``features (B, N, C)`` text-aware point features, ``logits (B, N, K)`` per-point class scores and
    ``attention (B, N, K)`` (head-averaged weights of each point over the ``K`` label texts; rows sum to 1)."""

    features: Tensor
    logits: Tensor
    attention: Tensor


class TextQueryingModule(nn.Module):
    """Cross-attention of point features over label-text embeddings (Text4Point's TQM).

    With point features ``f (B, N, C)`` (queries) and label embeddings ``t (K, T)`` (keys and values):

        u = W_t t                                        (K, C)
        h = f + MHA(q = LN(f), k = u, v = u)            multi-head attention over the K labels
        f' = h + FFN(LN(h))                             FFN: C -> ffn_ratio C -> C (GELU)
        logits_ic = s * cos(P f'_i, Q t_c)              s = exp(min(logit_scale, log max_logit_scale))

    ``P``, ``Q`` map to ``embed_dim`` (default ``C``); ``logit_scale = log(1 / init_temperature)``,
    learnable unless ``learnable_temperature=False`` (capped as :func:`alignkit.core.losses.logit_multiplier` caps
    it, so a scale at the cap keeps its gradient). ``C`` must be divisible by ``num_heads``.
    """

    def __init__(self, point_dim: int, text_dim: int, embed_dim: Optional[int] = None, num_heads: int = 4,
                 ffn_ratio: float = 2.0, dropout: float = 0.0, init_temperature: float = 0.07,
                 learnable_temperature: bool = True, max_logit_scale: float = 100.0):
        super().__init__()
        if point_dim % num_heads:
            raise ConfigError(f"text querying module: point feature width {point_dim} is not divisible by "
                              f"num_heads={num_heads}")
        if init_temperature <= 0:
            raise ConfigError(f"text querying module: init_temperature must be > 0, got {init_temperature}")
        embed_dim = embed_dim or point_dim
        self.text_proj = nn.Linear(text_dim, point_dim)
        self.norm_query = nn.LayerNorm(point_dim)
        self.attention = nn.MultiheadAttention(point_dim, num_heads, dropout=dropout, batch_first=True)
        self.norm_ffn = nn.LayerNorm(point_dim)
        hidden = max(1, int(round(ffn_ratio * point_dim)))
        self.ffn = nn.Sequential(nn.Linear(point_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, point_dim))
        self.point_head = nn.Linear(point_dim, embed_dim)
        self.class_head = nn.Linear(text_dim, embed_dim)
        scale = torch.tensor(math.log(1.0 / init_temperature))
        if learnable_temperature:
            self.logit_scale = nn.Parameter(scale)
        else:
            self.register_buffer("logit_scale", scale)
        self.max_logit_scale = float(max_logit_scale)

    def forward(self, point_features: Tensor, label_embeddings: Tensor) -> TextQueryOutput:
        """``point_features (B, N, C)``, ``label_embeddings (K, T)`` -> :class:`TextQueryOutput`."""
        if point_features.ndim != 3 or label_embeddings.ndim != 2:
            raise ValueError(f"text querying module expects point features (B, N, C) and label embeddings (K, T); "
                             f"got {tuple(point_features.shape)} and {tuple(label_embeddings.shape)}")
        labels = label_embeddings.to(point_features.dtype)
        keys = self.text_proj(labels).unsqueeze(0).expand(point_features.shape[0], -1, -1)
        attended, weights = self.attention(self.norm_query(point_features), keys, keys, need_weights=True)
        h = point_features + attended
        features = h + self.ffn(self.norm_ffn(h))
        scale = logit_multiplier(self.logit_scale, self.max_logit_scale)
        logits = scale * F.normalize(self.point_head(features), dim=-1) @ F.normalize(self.class_head(labels), dim=-1).T
        return TextQueryOutput(features, logits, weights)


# --------------------------------------------------------------------------- segmentation fine-tuning


def load_encoder_weights(encoder: nn.Module, path: str, prefix: str) -> int:
    """Load the entries ``prefix*`` of a checkpoint into ``encoder`` (strict); returns how many were loaded.

    ``path``: a Lightning ``.ckpt`` (its ``state_dict``) or an exported ``model.safetensors``. A frozen
    wrapper's ``module.`` prefix is dropped on both sides.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"pretrained checkpoint {file} does not exist; give a run's checkpoints/last.ckpt or "
                                "an exported model.safetensors")
    state = load_weights(file)
    picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    picked = {k[len("module."):] if k.startswith("module.") else k: v for k, v in picked.items()}
    if not picked:
        near = sorted({k.split(".encoder.")[0] + ".encoder." for k in state if ".encoder." in k})
        raise ConfigError(f"{file} has no weights under '{prefix}'; encoder prefixes in it: {near or 'none'}")
    target = encoder.module if isinstance(encoder, FrozenTower) else encoder
    target.load_state_dict(picked, strict=True)
    return len(picked)


@MODELS.register("text4point-seg")
class Text4PointSegmentation(AlignmentModule):
    """Text4Point semantic segmentation: point tower + :class:`TextQueryingModule` over the label texts.

    Args:
        model, optim: as :class:`~alignkit.core.module.AlignmentModule`; ``model.towers`` holds the point
            tower (encoder with ``forward_dense``) and a *frozen* text tower (e.g. ``minilm-l6`` with
            ``cache: true``) whose embeddings of the label prompts are the TQM's keys and values (computed
            once per label set and kept). Global ``objectives`` may be empty.
        points, text: the modalities of the two towers.
        templates: prompt templates with ``{}`` for the class name; a label's embedding is the normalised
            mean of its prompts' normalised embeddings (:func:`alignkit.core.metrics.class_embeddings`).
        num_heads, ffn_ratio, dropout, tqm_dim, init_temperature, learnable_temperature: of the TQM
            (``tqm_dim``: its ``embed_dim``).
        pretrained: a pretraining checkpoint (``.ckpt`` / ``.safetensors``) whose ``pretrained_prefix``
            entries initialise the point encoder when a fit starts from step 0 (:meth:`on_fit_start`).
        seg_weight: weight of the cross-entropy; ``ignore_index``: label of unlabeled points.

    Batches need ``seg (B, N)`` and ``class_names`` (every sample the same list). Logged: ``seg/loss``,
    ``seg/accuracy`` (over labeled points).
    """

    def __init__(self, model: Dict[str, Any], optim: Optional[Dict[str, Any]] = None, points: str = "points",
                 text: str = "text", templates: Sequence[str] = ("{}",), num_heads: Annotated[int, AT_LEAST_ONE] = 4,
                 ffn_ratio: Annotated[float, POSITIVE] = 2.0, dropout: Dropout = 0.0,
                 tqm_dim: Optional[Annotated[int, AT_LEAST_ONE]] = None,
                 init_temperature: Annotated[float, POSITIVE] = 0.07, learnable_temperature: bool = True,
                 pretrained: Optional[str] = None, pretrained_prefix: str = "towers.points.encoder.",
                 seg_weight: Annotated[float, NON_NEGATIVE] = 1.0, ignore_index: int = IGNORE_INDEX):
        super().__init__(model, optim)
        _check_towers(self.towers, {"points": points, "text": text}, "text4point-seg")
        if not self.towers[text].frozen:
            raise ConfigError("text4point-seg: the text tower must be frozen (frozen: true): its label embeddings "
                              "are computed once and kept")
        if not templates or any("{}" not in t for t in templates):
            raise ConfigError(f"text4point-seg templates need a '{{}}' placeholder each; got {list(templates)}")
        self.point_modality, self.text_modality = points, text
        self.templates = list(templates)
        self.seg_weight, self.ignore_index = float(seg_weight), int(ignore_index)
        text_dim = int(self.towers[text].encoder.output_dim)
        self.tqm = TextQueryingModule(_dense_dim(self.towers[points], points), text_dim, embed_dim=tqm_dim,
                                      num_heads=num_heads, ffn_ratio=ffn_ratio, dropout=dropout,
                                      init_temperature=init_temperature, learnable_temperature=learnable_temperature)
        self._label_cache: Dict[Tuple[str, ...], Tensor] = {}
        self.pretrained, self.pretrained_prefix = pretrained, pretrained_prefix

    def load_pretrained(self) -> int:
        """Copy the ``pretrained`` checkpoint's point encoder into this model; returns the entries loaded (0 without
        ``pretrained``)."""
        if self.pretrained is None:
            return 0
        return load_encoder_weights(self.towers[self.point_modality].encoder, self.pretrained, self.pretrained_prefix)

    def on_fit_start(self) -> None:
        """Initialise the point encoder from ``pretrained`` when a fit starts from step 0 (not when resuming, and
        never when a model is rebuilt from saved weights, so an exported model does not need the checkpoint)."""
        if self.trainer.global_step == 0:
            self.load_pretrained()

    def label_embeddings(self, class_names: Sequence[str]) -> Tensor:
        """``(K, T)`` normalised prompt-ensemble embeddings of the label set (cached per label set, on CPU)."""
        key = tuple(class_names)
        if key not in self._label_cache:
            tower = self.towers[self.text_modality]
            self._label_cache[key] = class_embeddings(lambda texts: tower.features(texts).float().cpu(), key,
                                                      self.templates)
        return self._label_cache[key].to(self.device)

    def text_query(self, points: Tensor, class_names: Sequence[str]) -> TextQueryOutput:
        """The TQM on the dense features of ``points (B, N, F)`` over the labels ``class_names``."""
        dense = _tower_dense(self.towers[self.point_modality], points, "text4point-seg points")
        return self.tqm(dense.float(), self.label_embeddings(class_names))

    def segment_logits(self, points: Tensor, class_names: Sequence[str]) -> Tensor:
        """Per-point class logits ``(B, N, K)`` of ``points (B, N, F)`` over ``class_names``."""
        return self.text_query(points, class_names).logits

    def compute_loss(self, batch: Dict[str, Any]) -> Dict[str, Tensor]:
        """``sum_k w_k loss_k + seg_weight * CE``; CE is the mean over labeled points of ``-log softmax_c(logits)``."""
        out = super().compute_loss(batch)
        logits = self.segment_logits(batch[self.input_key(self.point_modality)], batch_class_names(batch))
        target = batch[SEG_KEY].long()
        labeled = target != self.ignore_index
        if bool(labeled.any()):
            loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=self.ignore_index)
            accuracy = (logits.argmax(-1) == target)[labeled].float().mean()
        else:  # a batch without labels contributes nothing (cross-entropy over no points is NaN)
            loss, accuracy = logits.sum() * 0.0, torch.zeros((), device=logits.device)
        out["loss"] = out["loss"] + self.seg_weight * loss
        out["seg/loss"] = _metric(loss)
        out["seg/accuracy"] = _metric(accuracy)
        return out


def batch_class_names(batch: Dict[str, Any]) -> List[str]:
    """The label set of a collated batch: ``batch["class_names"]`` is one list per sample, all equal."""
    names = batch.get(CLASS_NAMES_KEY)
    if not names:
        raise KeyError(f"batch has no '{CLASS_NAMES_KEY}'; keys: {sorted(batch)}. Segmentation samples carry "
                       "the dataset's label set")
    if isinstance(names[0], str):
        return list(names)
    first = list(names[0])
    if any(list(n) != first for n in names[1:]):
        raise ValueError("the samples of one batch have different class_names; batch frames of one label set")
    return first


__all__ = ["BasicUNetEncoder", "sample_pixel_features", "sample_pairs", "DenseContrastOutput", "Text4PointPretraining",
           "TextQueryOutput", "TextQueryingModule", "load_encoder_weights", "Text4PointSegmentation",
           "batch_class_names"]
