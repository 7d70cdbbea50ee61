"""``torchvision-resnet``: a torchvision ResNet-18/34/50/101/152 state dict onto alignkit's ``monai-resnet`` tower.

torchvision's ResNet (v1.5: stride on the 3x3 convolution of a bottleneck, 7x7/2 stem, 3x3/2 max-pool, 1x1
shortcut convolutions without bias) is MONAI's ResNet with ``bias_downsample=False``, key for key:
``conv1``, ``bn1``, ``layer{1-4}.{i}.conv{1-3}/bn{1-3}/downsample.{0,1}`` -> the tower's ``net.<same key>``.
The classifier ``fc`` is left out (listed in ``left``) unless ``keep_fc=true``, which imports it as the
tower's ``linear`` head (then the tower outputs the ``(B, num_classes)`` logits).

Released checkpoints in this layout: torchvision's ``IMAGENET1K_V1``/``V2`` files, ConVIRT's and GLoRIA's image
encoders (GLoRIA's ``chexpert_resnet50.ckpt`` is a Lightning checkpoint: the ResNet sits under
``state_dict`` -> ``gloria.img_encoder.model.``, found automatically or given as ``prefix=``).
Torchvision code is never imported: only the checkpoint file is read (``torch.load(weights_only=True)`` or
safetensors).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from alignkit.core.images import IMAGENET_MEAN, IMAGENET_STD
from alignkit.core.importing import IMPORTERS, ImportedModel, ImportedTower

# (bottleneck?, blocks per stage) -> depth, as torchvision's resnet18 ... resnet152
ARCHS = {(False, (2, 2, 2, 2)): 18, (False, (3, 4, 6, 3)): 34, (True, (3, 4, 6, 3)): 50,
         (True, (3, 4, 23, 3)): 101, (True, (3, 8, 36, 3)): 152}
NORMS = {"imagenet": (list(IMAGENET_MEAN), list(IMAGENET_STD)), "half": ([0.5] * 3, [0.5] * 3)}
STEM = "conv1.weight"
FIRST_BLOCK = "layer1.0.conv1.weight"


def parse_bool(value: Any, option: str) -> bool:
    """A boolean option given as a bool or a CLI string (true/false, yes/no, 1/0)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    raise ValueError(f"option {option}={value!r}: give true or false")


def read_checkpoint(src: Path, unsafe_pickle: bool = False) -> Dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file or of a ``torch.save`` file (``.pt/.pth/.bin/.ckpt``), flattened:
    a Lightning checkpoint's ``state_dict`` (or a ``model``/``state_dict`` entry) is unwrapped, a ``module.``
    prefix (DataParallel) is kept for the prefix search to see. Only tensors are returned."""
    if src.is_dir():
        raise ValueError(f"torchvision-resnet reads one state-dict file; {src} is a folder")
    if src.suffix == ".safetensors":
        from safetensors.torch import load_file
        return dict(load_file(str(src)))
    try:
        blob = torch.load(src, map_location="cpu", weights_only=not unsafe_pickle)
    except Exception as err:  # pickle.UnpicklingError and friends: objects other than tensors in the file
        raise ValueError(f"{src}: cannot be read as a weights-only torch file ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]}). If the file holds other pickled objects (e.g. a "
                         f"training config) and you trust its source, pass unsafe_pickle=true") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(blob, Mapping) and isinstance(blob.get(key), Mapping):
            blob = blob[key]
            break
    if not isinstance(blob, Mapping):
        raise ValueError(f"{src}: expected a state dict (a mapping of tensor names to tensors); got "
                         f"{type(blob).__name__}")
    return {str(k): v for k, v in blob.items() if isinstance(v, Tensor)}


def find_prefix(keys: List[str], src: Path) -> str:
    """The one prefix ``p`` with both ``p + 'conv1.weight'`` and ``p + 'layer1.0.conv1.weight'`` among ``keys``."""
    found = sorted({k[:-len(FIRST_BLOCK)] for k in keys if k.endswith(FIRST_BLOCK)} &
                   {k[:-len(STEM)] for k in keys if k.endswith(STEM)})
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(f"{src}: no torchvision ResNet found (no '<prefix>conv1.weight' beside "
                         f"'<prefix>layer1.0.conv1.weight' among its {len(keys)} keys, e.g. {keys[:5]}); give "
                         f"prefix= the path of the ResNet inside the checkpoint")
    raise ValueError(f"{src}: several ResNets in the checkpoint (prefixes {found}); choose one with prefix=")


def infer_resnet(state: Mapping[str, Tensor], src: Path) -> Tuple[int, List[int], int]:
    """``(depth, widths, in_channels)`` of a torchvision ResNet state dict (prefix stripped): bottleneck blocks
    have a ``conv3``; the blocks per stage are counted from ``layer{s}.{i}.*``; the stage planes are the output
    channels of each stage's first ``conv1``."""
    bottleneck = "layer1.0.conv3.weight" in state
    counts = []
    for stage in range(1, 5):
        blocks = {int(m.group(1)) for k in state for m in [re.match(rf"layer{stage}\.(\d+)\.", k)] if m}
        counts.append(len(blocks))
    depth = ARCHS.get((bottleneck, tuple(counts)))
    if depth is None:
        raise ValueError(f"{src}: {'bottleneck' if bottleneck else 'basic'} blocks {counts} per stage are not "
                         f"those of a torchvision resnet18/34/50/101/152; give arch= to name it (the mismatch is "
                         f"then listed key by key)")
    widths = [int(state[f"layer{s}.0.conv1.weight"].shape[0]) for s in range(1, 5)]
    if bottleneck and any(int(state[f"layer{s}.0.conv3.weight"].shape[0]) != 4 * w
                          for s, w in zip(range(1, 5), widths)):
        raise ValueError(f"{src}: bottlenecks wider than their planes (wide_resnet / ResNeXt) are not supported "
                         f"by monai-resnet")
    return depth, widths, int(state[STEM].shape[1])


@IMPORTERS.register("torchvision-resnet")
def import_torchvision_resnet(src: Path, *, allow_partial: bool = False, prefix: Optional[str] = None,
                              arch: Optional[str] = None, keep_fc: Any = False, in_channels: Any = None,
                              norm: str = "imagenet", image_size: Any = 224, unsafe_pickle: Any = False
                              ) -> ImportedModel:
    """A torchvision ResNet state dict -> one ``image`` tower (``monai-resnet``, ``bias_downsample=False``).

    Options: ``prefix`` (the keys' prefix inside the file, e.g. ``gloria.img_encoder.model.``; default: found
    from the stem and first block's keys), ``arch`` (``resnet50``...; default inferred from the keys),
    ``keep_fc`` (import the classifier as a linear head), ``in_channels=1`` (grey inputs: the stem's kernel is
    summed over RGB, ``w' = sum_c w_c``, exact for a grey image replicated to 3 channels with one mean/std, as
    GLoRIA's ``norm: half``), ``norm`` (``imagenet`` or ``half``: the mean/std recorded), ``image_size``.
    """
    src = Path(src)
    keep_fc, unsafe = parse_bool(keep_fc, "keep_fc"), parse_bool(unsafe_pickle, "unsafe_pickle")
    if norm not in NORMS:
        raise ValueError(f"option norm={norm!r}: one of {', '.join(NORMS)}")
    raw = read_checkpoint(src, unsafe)
    notes: List[str] = []
    if prefix is None:
        prefix = find_prefix(sorted(raw), src)
    state = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"{src}: no key starts with prefix={prefix!r} (keys are e.g. {sorted(raw)[:5]})")
    outside = sorted(k for k in raw if not k.startswith(prefix))
    if outside:
        notes.append(f"{len(outside)} checkpoint keys outside prefix {prefix!r} not read (e.g. {outside[:3]})")
    if arch is not None:
        match = re.fullmatch(r"resnet(\d+)", str(arch))
        if not match or int(match.group(1)) not in ARCHS.values():
            raise ValueError(f"option arch={arch!r}: one of resnet18, resnet34, resnet50, resnet101, resnet152")
        depth = int(match.group(1))
        widths = ([int(state["layer%d.0.conv1.weight" % s].shape[0]) for s in range(1, 5)]
                  if all(f"layer{s}.0.conv1.weight" in state for s in range(1, 5)) else [64, 128, 256, 512])
        channels = int(state[STEM].shape[1]) if STEM in state else 3
    else:
        depth, widths, channels = infer_resnet(state, src)
    fc = {k[len("fc."):]: v for k, v in state.items() if k.startswith("fc.")}
    body = {f"net.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    left: List[str] = []
    if fc and not keep_fc:
        left = sorted(prefix + "fc." + k for k in fc)
        notes.append(f"the classifier fc ({tuple(fc['weight'].shape)}) was left out; keep_fc=true imports it as "
                     f"a linear head")
    elif keep_fc and not fc:
        raise ValueError(f"{src}: keep_fc=true but the checkpoint has no fc.weight / fc.bias under {prefix!r}")
    target = channels if in_channels is None else int(in_channels)
    if target != channels:
        if not (target == 1 and channels == 3 and "net." + STEM in body):
            raise ValueError(f"option in_channels={in_channels}: only 1 (from RGB weights) or {channels}")
        body["net." + STEM] = body["net." + STEM].sum(dim=1, keepdim=True)
        notes.append("in_channels=1: the stem's kernel is summed over RGB (exact for a grey image replicated to "
                     "3 channels with the same mean/std in each)")
    mean, std = NORMS[norm]
    if target == 1:
        mean, std = [sum(mean) / 3], [sum(std) / 3]
    params: Dict[str, Any] = {"depth": depth, "spatial_dims": 2, "in_channels": target, "bias_downsample": False}
    if widths != [64, 128, 256, 512]:
        params["widths"] = widths
    expansion = 4 if depth >= 50 else 1
    size = int(image_size)
    tower = ImportedTower(
        encoder="monai-resnet", params=params, state_dict=body,
        preprocessing={"image_size": size, "resize": round(size * 256 / 224), "crop": "center",
                       "interpolation": "bilinear", "channels": target, "mean": mean, "std": std})
    embed_dim = widths[3] * expansion
    if keep_fc:
        tower.head, tower.head_state = "linear", {"weight": fc["weight"], "bias": fc["bias"]}
        embed_dim = int(fc["weight"].shape[0])
    notes.append(f"torchvision resnet{depth} (stage planes {widths}) -> monai-resnet; outputs: pooled "
                 f"(B, {widths[3] * expansion}) and forward_tokens = the last feature map's cells")
    return ImportedModel(format="torchvision-resnet", source=str(src), towers={"image": tower},
                         embed_dim=embed_dim, notes=notes, left=left)


__all__ = ["import_torchvision_resnet", "read_checkpoint", "find_prefix", "infer_resnet", "parse_bool"]
