"""Released checkpoints in: the field's published weights mapped onto alignkit towers.

An importer (``IMPORTERS``, one per format as its anchor publishes it: ``open-clip``, ``hf-vision``,
``hf-clip``, ``torchvision-resnet``, ``ulip-pointbert``, ``ulip-pointnet2``, ``voltron``) reads a checkpoint and
returns an :class:`ImportedModel`: for each modality the alignkit encoder (registry name + constructor params),
its state dict under the encoder's own keys, the projection head and the anchor's preprocessing.
:func:`import_weights` builds every tower, loads it strictly (:func:`match_state_dict`) and writes::

    OUT/config.json, OUT/model.safetensors     the model folder alignkit.load(OUT) reads (AlignedModel)
    OUT/towers/<modality>/tower.json           {"encoder", "params", "head", "head_params", "preprocessing"}
    OUT/towers/<modality>/model.safetensors    the encoder's weights ("encoder.*") and the head's ("head.*")
    OUT/import.json                            format, source files with their sha256, preprocessing, notes, left

A config starts a tower from an imported one with ``encoder: imported, params: {path: OUT/towers/image}``
(:func:`load_imported_tower`: the encoder, followed by the imported projection head when the checkpoint has one;
``head: identity`` keeps the imported joint space, any other head trains a new projection on top).

Nothing is loaded partially unless ``allow_partial``: a checkpoint whose keys or shapes do not fit raises
:class:`WeightMismatchError` listing the first missing, unexpected and mis-shaped keys.
"""
from __future__ import annotations

import copy
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from safetensors.torch import save_file
from torch import Tensor, nn

from alignkit.core.checkpoints import load_safetensors, read_json
from alignkit.core.encoders.base import InnerAttributes
from alignkit.core.images import PREPROCESS_KEYS
from alignkit.core.registry import ENCODERS, HEADS, IMPORTERS, MODELS
from alignkit.version import __version__

PathLike = Union[str, Path]
SHOWN = 10  # keys listed per kind in a mismatch error


@dataclass
class ImportedTower:
    """One modality of an imported checkpoint.

    ``state_dict`` has exactly the keys of ``ENCODERS.build(encoder, **params).state_dict()``; ``head_state``
    (optional) those of ``HEADS.build(head, in_dim=encoder.output_dim, out_dim=embed_dim, **head_params)``.
    ``assets`` maps a constructor parameter to a local file or folder (a tokenizer, say) that is copied into the
    tower folder, the parameter then pointing at the copy.
    """
    encoder: str
    params: Dict[str, Any]
    state_dict: Dict[str, Tensor]
    head: str = "identity"
    head_params: Dict[str, Any] = field(default_factory=dict)
    head_state: Optional[Dict[str, Tensor]] = None
    preprocessing: Dict[str, Any] = field(default_factory=dict)
    assets: Dict[str, Path] = field(default_factory=dict)
    asset_files: Dict[str, List[str]] = field(default_factory=dict)
    """Per folder asset, the glob patterns of the files to copy (default: all), e.g. a language model's config and
    tokenizer without its weights when the checkpoint carries them: ``["*.json", "*.txt"]``."""


@dataclass
class ImportedModel:
    """What an importer read: towers by modality, the joint space, the objective (``loss``, ``loss_params``,
    ``loss_state``: e.g. the checkpoint's ``logit_scale``), notes for the user and the keys left out."""
    format: str
    source: str
    towers: Dict[str, ImportedTower]
    embed_dim: int
    loss: str = "clip"
    loss_params: Dict[str, Any] = field(default_factory=dict)
    loss_state: Dict[str, Tensor] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    left: List[str] = field(default_factory=list)


class WeightMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not fit the alignkit module it is loaded into."""


def key_listing(title: str, items: List[str]) -> str:
    """``  title (n): k1, k2, ... (and m more)``: the first :data:`SHOWN` of ``items``."""
    more = f" (and {len(items) - SHOWN} more)" if len(items) > SHOWN else ""
    return f"  {title} ({len(items)}): " + ", ".join(items[:SHOWN]) + more


def mismatch_error(source: str, owner: str, missing: List[str], unexpected: List[str], misshaped: List[str],
                   advice: str) -> WeightMismatchError:
    """The error for a checkpoint that does not fit ``owner``: counts, then the first :data:`SHOWN` keys of each
    kind (a mis-shaped entry with both shapes), then ``advice``."""
    lines = [f"{source}: the checkpoint does not fit {owner} ({len(missing)} missing, {len(unexpected)} "
             f"unexpected, {len(misshaped)} mis-shaped keys):"]
    lines += [key_listing(title, items) for title, items in
              (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if items]
    lines.append(f"  {advice}")
    return WeightMismatchError("\n".join(lines))


def compare_state_dict(module: nn.Module, state: Mapping[str, Tensor]) -> Tuple[List[str], List[str], List[str]]:
    """``(missing, unexpected, mis-shaped)`` keys of ``state`` against ``module.state_dict()``; a mis-shaped
    entry reads ``key: checkpoint (a, b) vs model (c, d)``."""
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    misshaped = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                       for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
    return missing, unexpected, misshaped


def match_state_dict(module: nn.Module, state: Mapping[str, Tensor], *, source: str,
                     allow_partial: bool = False) -> List[str]:
    """Load ``state`` into ``module``; every key and shape must fit, else :class:`WeightMismatchError` naming
    ``source`` and listing the first missing, unexpected and mis-shaped keys. With ``allow_partial`` the entries
    that fit are loaded and the sorted list of what was left (missing, unexpected, mis-shaped) is returned."""
    missing, unexpected, misshaped = compare_state_dict(module, state)
    left = sorted(missing + unexpected + [m.split(":")[0] for m in misshaped])
    if left and not allow_partial:
        raise mismatch_error(source, type(module).__name__, missing, unexpected, misshaped,
                             "check the format and its options (model config, prefix), or pass --allow-partial to "
                             "load what fits and see what was left")
    own = module.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    module.load_state_dict(fitting, strict=not left)
    return left


def local_hf_folder(value: Optional[str], what: str, model: str) -> Path:
    """The local Hugging Face folder ``value`` names for ``what`` (an option or parameter, e.g. ``"voltron option
    language_model"``): ValueError when it is not given, FileNotFoundError when it holds no ``config.json``. alignkit
    never downloads; the messages say how to fetch ``model`` once."""
    if value is None:
        raise ValueError(f"{what} is required: a local folder of {model} with its config.json and tokenizer files "
                         f"(e.g. `huggingface-cli download {model} --local-dir <folder>`); alignkit never downloads")
    folder = Path(value).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{what} '{value}' holds no config.json: give a local folder of {model} with its "
                                "config.json and tokenizer files")
    return folder


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def source_files(src: Path) -> Dict[str, str]:
    """``{relative path: sha256}`` of a checkpoint file, or of every file in a checkpoint folder."""
    if src.is_file():
        return {src.name: sha256_of(src)}
    return {str(p.relative_to(src)): sha256_of(p) for p in sorted(src.rglob("*")) if p.is_file()}


class ImportedEncoder(InnerAttributes, nn.Module):
    """An imported encoder followed by its imported projection head: ``(B, ...) -> (B, output_dim)``.
    Other attributes (``forward_tokens``, ``embed_texts``, ``tokenizer``...) are the encoder's."""

    _inner = "encoder"

    def __init__(self, encoder: nn.Module, head: nn.Module, output_dim: int):
        super().__init__()
        self.encoder, self.head, self.output_dim = encoder, head, output_dim

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.head(self.encoder(*args, **kwargs))


def _json_ready(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


@ENCODERS.register("imported")
def load_imported_tower(path: str) -> nn.Module:
    """The encoder of an imported tower folder (``OUT/towers/<modality>``) with its weights loaded strictly, followed
    by the imported projection head when the checkpoint had one (then ``output_dim`` is the joint space)."""
    folder = Path(path)
    meta_file = folder / "tower.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{folder} is not an imported tower folder: {meta_file} is missing (create one "
                                "with `alignkit import-weights FORMAT SRC --out DIR` and point at DIR/towers/<name>)")
    meta = read_json(meta_file)
    params = dict(meta["params"])
    for key in meta.get("assets", []):
        params[key] = str(folder / params[key])
    state = load_safetensors(folder / "model.safetensors")
    encoder = ENCODERS.build(meta["encoder"], where=f"{meta_file}.params", **params)
    enc_state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    match_state_dict(encoder, enc_state, source=str(folder / "model.safetensors"))
    head_state = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    if not head_state:
        return encoder
    out_dim = int(meta["embed_dim"])
    head = HEADS.build(meta["head"], where=f"{meta_file}.head_params", in_dim=encoder.output_dim, out_dim=out_dim,
                       **meta.get("head_params", {}))
    match_state_dict(head, head_state, source=str(folder / "model.safetensors"))
    return ImportedEncoder(encoder, head, out_dim)


def _write_tower(folder: Path, spec: ImportedTower, encoder: nn.Module, head: Optional[nn.Module],
                 embed_dim: int) -> None:
    """Write one tower folder: assets copied in (the params name them relative to the folder), weights, tower.json."""
    folder.mkdir(parents=True, exist_ok=True)
    params = copy.deepcopy(spec.params)
    for key, asset in spec.assets.items():
        asset = Path(asset)
        target = folder / key
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        if asset.is_dir():
            patterns = spec.asset_files.get(key)
            target.mkdir(parents=True)
            for item in sorted(asset.rglob("*")):
                if item.is_file() and (patterns is None or any(item.match(p) for p in patterns)):
                    copied = target / item.relative_to(asset)
                    copied.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(item, copied)
        else:
            shutil.copyfile(asset, target)
        params[key] = key
    state = {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    if head is not None:
        state.update({f"head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()})
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    meta = {"encoder": spec.encoder, "params": params, "assets": sorted(spec.assets), "head": spec.head,
            "head_params": spec.head_params, "embed_dim": embed_dim, "preprocessing": spec.preprocessing}
    (folder / "tower.json").write_text(json.dumps(_json_ready(meta), indent=2))


def image_preprocess(preprocessing: Mapping[str, Any]) -> Dict[str, Any]:
    """The part of a tower's preprocessing that :class:`~alignkit.core.images.ImageTextDecoder` reads."""
    return {k: preprocessing[k] for k in PREPROCESS_KEYS if k in preprocessing}


def import_weights(format: str, src: PathLike, out: PathLike, *, allow_partial: bool = False,
                   **options: Any) -> Path:
    """Import the checkpoint ``src`` of ``format`` into the folder ``out`` (see the module docstring)."""
    src, out = Path(src), Path(out)
    if not src.exists():
        raise FileNotFoundError(f"import-weights: {src} does not exist")
    importer = IMPORTERS.get(format)
    imported: ImportedModel = importer(src, allow_partial=allow_partial, **options)
    names = list(imported.towers)
    module_towers = {name: {"encoder": spec.encoder,
                            "params": {k: (f"towers/{name}/{k}" if k in spec.assets else v)
                                       for k, v in spec.params.items()},
                            "head": spec.head if spec.head_state is not None else "identity",
                            "head_params": spec.head_params if spec.head_state is not None else {}}
                     for name, spec in imported.towers.items()}
    objectives = ([{"a": names[0], "b": names[1], "loss": imported.loss, "params": imported.loss_params}]
                  if len(names) == 2 else [])
    model_cfg = {"embed_dim": imported.embed_dim, "towers": module_towers, "objectives": objectives,
                 "ema": {"enabled": False}}
    building = copy.deepcopy(model_cfg)  # built once, with the assets where the importer left them
    for name, spec in imported.towers.items():
        building["towers"][name]["params"].update({k: str(v) for k, v in spec.assets.items()})
    module = MODELS.get("alignment")(model=building, optim={})
    left = list(imported.left)
    preprocess: Dict[str, Any] = {}
    out.mkdir(parents=True, exist_ok=True)
    for name, spec in imported.towers.items():
        tower = module.towers[name]
        left += [f"{name}.encoder.{k}" for k in match_state_dict(tower.encoder, spec.state_dict,
                                                                   source=f"{src} ({name})",
                                                                   allow_partial=allow_partial)]
        head = tower.head if spec.head_state is not None else None
        if head is not None:
            left += [f"{name}.head.{k}" for k in match_state_dict(head, spec.head_state,
                                                                    source=f"{src} ({name} head)",
                                                                    allow_partial=allow_partial)]
        _write_tower(out / "towers" / name, spec, tower.encoder, head, imported.embed_dim)
        preprocess.update(image_preprocess(spec.preprocessing))
    if imported.loss_state:
        match_state_dict(module.losses[0], imported.loss_state, source=f"{src} (logit scale)")
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    meta = {"alignkit_version": __version__, "model_class": "alignment", "model_params": {}, "model": model_cfg,
            "preprocess": preprocess, "modalities": names, "asset_params": {n: sorted(s.assets)
                                                                          for n, s in imported.towers.items()}}
    (out / "config.json").write_text(json.dumps(_json_ready(meta), indent=2))
    report = {"alignkit_version": __version__, "format": format, "source": str(src.resolve()),
              "files": source_files(src), "options": {k: str(v) for k, v in options.items()},
              "allow_partial": allow_partial, "embed_dim": imported.embed_dim,
              "preprocessing": {n: s.preprocessing for n, s in imported.towers.items()},
              "notes": imported.notes, "left": sorted(left)}
    (out / "import.json").write_text(json.dumps(_json_ready(report), indent=2))
    return out


def read_import_report(folder: PathLike) -> Dict[str, Any]:
    """The ``import.json`` of an imported model folder."""
    return read_json(Path(folder) / "import.json")


__all__ = ["IMPORTERS", "ImportedTower", "ImportedModel", "WeightMismatchError", "key_listing", "mismatch_error",
           "compare_state_dict", "match_state_dict", "import_weights", "load_imported_tower", "ImportedEncoder",
           "read_import_report", "source_files", "image_preprocess", "local_hf_folder"]
