"""Text prompts for point clouds: ULIP's zero-shot templates and its pretraining caption templates.

ULIP (Xue et al., CVPR 2023) evaluates ModelNet40 zero-shot classification with a 64-template ensemble
(``data/templates.json`` key ``"modelnet40_64"``), the CLIP ImageNet prompt set as PointCLIP adapted it,
with ``"a point cloud model of {}."`` first. Its ShapeNet pretraining reads key ``"shapenet_64"``, the same
64 phrases. They are reproduced here as released, including the missing full stop of
``"a black and white photo of a {}"``.

Every template holds one ``{}`` placeholder for the class name, as
:func:`alignkit.core.metrics.class_embeddings` and the ``zero_shot`` evaluator expect.
"""
from __future__ import annotations

from typing import Annotated, Dict, List, Optional, Sequence, Tuple, Union

from alignkit.core.params import OneOf
from alignkit.core.registry import ConfigError, did_you_mean

MODELNET40_64: Tuple[str, ...] = (
    "a point cloud model of {}.",
    "There is a {} in the scene.",
    "There is the {} in the scene.",
    "a photo of a {} in the scene.",
    "a photo of the {} in the scene.",
    "a photo of one {} in the scene.",
    "itap of a {}.",
    "itap of my {}.",
    "itap of the {}.",
    "a photo of a {}.",
    "a photo of my {}.",
    "a photo of the {}.",
    "a photo of one {}.",
    "a photo of many {}.",
    "a good photo of a {}.",
    "a good photo of the {}.",
    "a bad photo of a {}.",
    "a bad photo of the {}.",
    "a photo of a nice {}.",
    "a photo of the nice {}.",
    "a photo of a cool {}.",
    "a photo of the cool {}.",
    "a photo of a weird {}.",
    "a photo of the weird {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of a clean {}.",
    "a photo of the clean {}.",
    "a photo of a dirty {}.",
    "a photo of the dirty {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of a {}.",
    "a dark photo of the {}.",
    "a photo of a hard to see {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of a {}.",
    "a low resolution photo of the {}.",
    "a cropped photo of a {}.",
    "a cropped photo of the {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of a {}.",
    "a blurry photo of the {}.",
    "a pixelated photo of a {}.",
    "a pixelated photo of the {}.",
    "a black and white photo of the {}.",
    "a black and white photo of a {}",
    "a plastic {}.",
    "the plastic {}.",
    "a toy {}.",
    "the toy {}.",
    "a plushie {}.",
    "the plushie {}.",
    "a cartoon {}.",
    "the cartoon {}.",
    "an embroidered {}.",
    "the embroidered {}.",
    "a painting of the {}.",
    "a painting of a {}.",
)
"""ULIP's 64 ModelNet40 zero-shot prompt templates (``templates.json["modelnet40_64"]``), in ULIP's order."""

SHAPENET_64: Tuple[str, ...] = MODELNET40_64
"""ULIP's pretraining caption templates (``templates.json["shapenet_64"]``): the same 64 phrases."""

POINT_CLOUD_1: Tuple[str, ...] = ("a point cloud model of {}.",)
"""The single template a fixed (evaluation) caption uses: the first of the ensembles."""

TEMPLATE_SETS: Dict[str, Tuple[str, ...]] = {
    "modelnet40_64": MODELNET40_64,
    "shapenet_64": SHAPENET_64,
    "point_cloud_1": POINT_CLOUD_1,
}
"""Named template sets a config may refer to (``templates: modelnet40_64``)."""


Templates = Union[Annotated[str, OneOf(tuple(TEMPLATE_SETS))], Sequence[str]]
"""A parameter naming a set of :data:`TEMPLATE_SETS` or giving the templates (:func:`resolve_templates`)."""


def resolve_templates(templates: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """A named set of :data:`TEMPLATE_SETS`, or the given templates checked to hold one ``{}`` each."""
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise ConfigError(f"unknown template set '{templates}'{did_you_mean(templates, TEMPLATE_SETS)}; "
                              f"known: {', '.join(TEMPLATE_SETS)} (or give a list of templates with '{{}}')")
        return TEMPLATE_SETS[templates]
    out = tuple(str(t) for t in templates)
    bad = [t for t in out if t.count("{}") != 1]
    if not out or bad:
        raise ConfigError(f"every caption template needs exactly one '{{}}' for the class name; bad: {bad or out}")
    return out


def readable_class_name(name: str) -> str:
    """A folder/class key as words: ``"night_stand"`` -> ``"night stand"`` (what prompts embed)."""
    return " ".join(name.replace("_", " ").split())


def class_prompts(class_name: str, templates: Union[str, Sequence[str]] = "modelnet40_64") -> List[str]:
    """Every template of ``templates`` filled with the readable ``class_name``."""
    name = readable_class_name(class_name)
    return [t.replace("{}", name) for t in resolve_templates(templates)]


def point_caption(template: str, name: str, description: Optional[str] = None) -> str:
    """``template`` filled with the readable ``name``, followed by ``description`` (metadata) when given.

    ``point_caption("a point cloud model of {}.", "night_stand", "with two drawers")`` ->
    ``"a point cloud model of night stand. with two drawers"``.
    """
    text = template.replace("{}", readable_class_name(name))
    return f"{text} {description.strip()}" if description and description.strip() else text
