"""A Hugging Face vision backbone as a tower (``"hf-vision"``): ``AutoModel`` over a local folder or a config dict.

Families (transformers' ``model_type``) and what the tower returns for ``images (B, 3, H, W)``:

============  =======================================  ==========================  ==============================
model_type    ``last_hidden_state``                    default ``pool``            ``forward_tokens`` (B, N, C)
============  =======================================  ==========================  ==============================
vit           (B, 1 + N, C) tokens, final LayerNorm    ``cls``: token 0            the N patch tokens
dinov2        (B, 1 [+ R] + N, C), final LayerNorm     ``cls`` (= its pooler)      the N patch tokens
swin          (B, N, C), final LayerNorm               ``pooler``: token mean      the N tokens
convnext      (B, C, h, w) map (before the LayerNorm)  ``pooler``: LN(map mean)    the h*w cells of the map
resnet        (B, C, h, w) map                         ``pooler``: map mean        the h*w cells of the map
============  =======================================  ==========================  ==============================

``pool``: ``"pooler"`` (the model's ``pooler_output``), ``"cls"`` (token 0; token models only) or ``"mean"``
(the mean of ``forward_tokens``). ViT's pooler (a tanh dense layer that ``ViTForImageClassification`` checkpoints
do not carry) is dropped unless ``pool="pooler"``. Weights are only read from local folders.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Dict, Mapping, Optional

from torch import Tensor, nn

from alignkit.core.encoders.image import check_image
from alignkit.core.params import OneOf, check_choice
from alignkit.core.registry import ENCODERS, ConfigError, did_you_mean

HF_VISION_POOLS = ("pooler", "cls", "mean")
TOKEN_FAMILIES = ("vit", "dinov2", "dinov2_with_registers", "swin", "deit")  # last_hidden_state is (B, L, C)
CLS_FAMILIES = ("vit", "dinov2", "dinov2_with_registers", "deit")  # token 0 is a class token
DEFAULT_POOL = {"vit": "cls", "deit": "cls", "dinov2": "cls", "dinov2_with_registers": "cls"}
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _side(value: Any) -> Optional[int]:
    """A square side from an image processor's ``size``/``crop_size`` (an int or ``{height, width}`` /
    ``{shortest_edge}``)."""
    if isinstance(value, Mapping):
        value = value.get("height", value.get("shortest_edge"))
    return None if value is None else int(value)


def read_image_processor(folder: Path) -> Dict[str, Any]:
    """The preprocessing of a Hugging Face folder's ``preprocessor_config.json`` as alignkit records it:
    ``image_size`` (the side fed to the model: the crop if it crops, else the resize), ``resize`` (the side or
    shortest edge resized to), ``crop`` (``"center"`` or None), ``interpolation``, ``mean``, ``std``, ``channels``;
    ``{}`` when the file is absent."""
    file = Path(folder) / "preprocessor_config.json"
    if not file.is_file():
        return {}
    raw = json.loads(file.read_text())
    resize = _side(raw.get("size"))
    crop = _side(raw.get("crop_size")) if raw.get("do_center_crop") else None
    if raw.get("crop_pct") and resize and crop is None:  # ConvNeXt: resize to size / crop_pct, crop to size
        crop, resize = resize, int(resize / float(raw["crop_pct"])) if resize < 384 else resize
    out: Dict[str, Any] = {"image_size": crop or resize, "resize": resize, "crop": "center" if crop else None,
                           "interpolation": PIL_RESAMPLE.get(raw.get("resample"), raw.get("resample")),
                           "channels": 3}
    if raw.get("do_normalize", True) and raw.get("image_mean") is not None:
        out["mean"], out["std"] = list(raw["image_mean"]), list(raw["image_std"])
    if raw.get("do_rescale", True) and raw.get("rescale_factor") not in (None, 1 / 255):
        out["rescale_factor"] = raw["rescale_factor"]
    return {k: v for k, v in out.items() if v is not None}


def vision_config(config: Mapping[str, Any], owner: str = "hf-vision") -> Any:
    """A transformers config from ``{"model_type": ..., **fields}`` (e.g. ``ViTConfig(**fields)``)."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    fields = dict(config)
    model_type = fields.pop("model_type", None)
    if model_type not in CONFIG_MAPPING:
        raise ConfigError(f"{owner} config needs a transformers 'model_type' (e.g. 'vit', 'dinov2', 'swin', "
                          f"'convnext', 'resnet'); got {model_type!r}"
                          f"{did_you_mean(str(model_type), CONFIG_MAPPING.keys())}")
    return AutoConfig.for_model(model_type, **fields)


def model_kwargs(family: str, pool: str) -> Dict[str, Any]:
    """``AutoModel`` keyword arguments of a family and pool: ViT's pooler is dropped unless ``pool="pooler"``."""
    return {"add_pooling_layer": False} if family in ("vit", "deit") and pool != "pooler" else {}


@ENCODERS.register("hf-vision")
class HFVisionEncoder(nn.Module):
    """A transformers vision backbone: ``forward(images (B, 3, H, W)) -> (B, output_dim)`` (see the module table).

    Args:
        path: local folder of a Hugging Face vision model (``config.json`` + weights); its
            ``preprocessor_config.json``, when present, is read into ``preprocessing``.
        config: instead of ``path``, a transformers config dict (``{"model_type": "vit", "hidden_size": 32, ...}``)
            for a randomly initialised model (an imported tower: its weights are loaded afterwards).
        pool: ``"pooler"``, ``"cls"`` or ``"mean"``; default per family (``cls`` for ViT/DINOv2, else ``pooler``).

    Token models are fed images of their ``image_size``; ViT and Swin take other sizes with
    ``interpolate_pos_encoding`` (DINOv2 always interpolates). ``output_dim``: the pooled width (ViT/DINOv2:
    ``hidden_size``; Swin: ``embed_dim * 2^(stages - 1)``; ResNet/ConvNeXt: ``hidden_sizes[-1]``).
    """

    def __init__(self, path: Optional[str] = None, config: Optional[Dict[str, Any]] = None,
                 pool: Optional[Annotated[str, OneOf(HF_VISION_POOLS)]] = None):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if (path is None) == (config is None):
            raise ConfigError("hf-vision needs exactly one of path (a local Hugging Face folder) or config (a "
                              "transformers config dict such as {model_type: vit, hidden_size: 192, ...})")
        if path is not None:
            folder = Path(path).expanduser()
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(
                    f"hf-vision: path '{path}' is not a local Hugging Face folder (no config.json). alignkit never "
                    f"downloads weights: fetch the model once (e.g. `huggingface-cli download google/vit-base-"
                    f"patch16-224 --local-dir <folder>`) and set path to that folder.")
            hf_config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        else:
            hf_config = vision_config(config)
        family = str(hf_config.model_type)
        pool = pool or DEFAULT_POOL.get(family, "pooler")
        check_choice(pool, HF_VISION_POOLS, "hf-vision pool")
        if pool == "cls" and family not in CLS_FAMILIES:
            raise ConfigError(f"hf-vision pool='cls': a {family} model has no class token; use 'pooler' or 'mean'")
        extra = model_kwargs(family, pool)
        if path is not None:
            self.model = AutoModel.from_pretrained(str(folder), local_files_only=True, **extra)
        else:
            self.model = AutoModel.from_config(hf_config, **extra)
        self.family, self.pool = family, pool
        self.preprocessing = read_image_processor(folder) if path is not None else {}
        cfg = self.model.config
        self.image_size = int(cfg.image_size) if hasattr(cfg, "image_size") else None
        self.num_prefix = (1 + int(getattr(cfg, "num_register_tokens", 0))) if family in CLS_FAMILIES else 0
        self._interpolate = family in ("vit", "deit", "swin")
        if hasattr(self.model, "num_features"):
            self.output_dim = int(self.model.num_features)
        elif getattr(cfg, "hidden_sizes", None):
            self.output_dim = int(cfg.hidden_sizes[-1])
        else:
            self.output_dim = int(cfg.hidden_size)
        self.in_channels = int(getattr(cfg, "num_channels", 3))

    def _outputs(self, images: Tensor) -> Any:
        check_image(images, 2, self.in_channels, f"hf-vision ({self.family})")
        kwargs = {}
        if self._interpolate and self.image_size and tuple(images.shape[-2:]) != (self.image_size,) * 2:
            kwargs["interpolate_pos_encoding"] = True
        return self.model(pixel_values=images, **kwargs)

    def _tokens(self, hidden: Tensor) -> Tensor:
        if hidden.ndim == 4:  # a CNN's (B, C, h, w) map
            return hidden.flatten(2).transpose(1, 2)
        return hidden[:, self.num_prefix:]

    def forward(self, images: Tensor) -> Tensor:
        """``(B, output_dim)``: the model's pooler output, its class token or the mean of its tokens."""
        out = self._outputs(images)
        if self.pool == "pooler":
            return out.pooler_output.flatten(1)
        if self.pool == "cls":
            return out.last_hidden_state[:, 0]
        return self._tokens(out.last_hidden_state).mean(1)

    def forward_tokens(self, images: Tensor) -> Tensor:
        """``(B, N, C)`` patch tokens (class and register tokens dropped) or the last feature map's cells."""
        return self._tokens(self._outputs(images).last_hidden_state)


__all__ = ["HF_VISION_POOLS", "read_image_processor", "vision_config", "model_kwargs", "HFVisionEncoder"]
