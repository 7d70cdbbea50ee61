"""BenchX zero-shot and retrieval as config evaluators (``EVALUATORS``), so a model is scored the BenchX way by
``alignkit eval`` without training: a run's checkpoint (``--ckpt``) or a model folder (``--model``), released
weights imported with ``alignkit import-weights`` included::

    eval:
      - {name: benchx_zero_shot}                        # CheXzero-style positive/negative prompt sets, AUROC
      - {name: benchx_retrieval, params: {num_candidates: 100}}   # image <-> report R@K among 100 studies

Both score the evaluator's split (``split``, default ``test``) with the protocols of :mod:`.zero_shot` and
:mod:`.retrieval`; metrics ``benchx_zero_shot/auroc_<finding>``, ``benchx_zero_shot/auroc_mean``,
``benchx_retrieval/image2report_R@k``, ``benchx_retrieval/report2image_R@k`` (and median/mean ranks).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Dict, Optional, Sequence

from alignkit.core.params import AT_LEAST_ONE, POSITIVE, Range
from alignkit.core.registry import EVALUATORS
from alignkit.domains.medical.xray.bench.retrieval import retrieval_report_image
from alignkit.domains.medical.xray.bench.zero_shot import default_prompts, zero_shot_multilabel


@EVALUATORS.register("benchx_zero_shot")
class BenchXZeroShotEvaluator:
    """Multi-label zero-shot AUROC per finding (the dataset's ``class_names``; prompts :func:`default_prompts`,
    negatives the normal statements), and their mean over the findings that have both classes in the split.
    Writes ``zero_shot_roc.png``."""

    def __init__(self, temperature: Annotated[float, POSITIVE] = 1.0, batch_size: Annotated[int, AT_LEAST_ONE] = 64,
                 image_modality: str = "image", text_modality: str = "text",
                 class_names: Optional[Sequence[str]] = None):
        self.temperature, self.batch_size = temperature, batch_size
        self.image_modality, self.text_modality = image_modality, text_modality
        self.class_names = None if class_names is None else list(class_names)

    def __call__(self, model: Any, train_loader: Any, test_loader: Any, out_dir: Path) -> Dict[str, float]:
        prompts = default_prompts(self.class_names) if self.class_names is not None else None
        result = zero_shot_multilabel(model, test_loader, prompts, self.text_modality, self.image_modality,
                                      temperature=self.temperature, batch_size=self.batch_size, out_dir=out_dir)
        return {f"benchx_zero_shot/auroc_{name}": value for name, value in result.auroc.items()
                if not (math.isnan(value) and name != "mean")}


@EVALUATORS.register("benchx_retrieval")
class BenchXRetrievalEvaluator:
    """Image <-> report retrieval R@K among ``num_candidates`` studies (the images of a study are correct for its
    report), both directions."""

    def __init__(self, num_candidates: Optional[Annotated[int, Range(ge=2)]] = 100,
                 ks: Sequence[Annotated[int, AT_LEAST_ONE]] = (1, 5, 10), seed: int = 0,
                 batch_size: Annotated[int, AT_LEAST_ONE] = 64, image_modality: str = "image",
                 text_modality: str = "text"):
        self.num_candidates, self.ks, self.seed, self.batch_size = num_candidates, tuple(ks), seed, batch_size
        self.image_modality, self.text_modality = image_modality, text_modality

    def __call__(self, model: Any, train_loader: Any, test_loader: Any, out_dir: Path) -> Dict[str, float]:
        metrics = retrieval_report_image(model, test_loader, self.num_candidates, self.ks, self.image_modality,
                                         self.text_modality, seed=self.seed, batch_size=self.batch_size)
        return {f"benchx_retrieval/{k}": v for k, v in metrics.items()}


__all__ = ["BenchXZeroShotEvaluator", "BenchXRetrievalEvaluator"]
