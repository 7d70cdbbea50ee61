"""BenchX image <-> report retrieval: R@K among ``num_candidates`` studies. Sample format: :mod:`.shared`."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from torch.utils.data import DataLoader

from alignkit.core.embeddings import embed_loader
from alignkit.core.metrics import bidirectional_retrieval, group_ids
from alignkit.domains.medical.xray.bench.shared import Split, sample_loader


def retrieval_report_image(model: Any, loader: Split, num_candidates: Optional[int] = 100,
                           ks: Sequence[int] = (1, 5, 10), image_modality: str = "image",
                           text_modality: str = "text", group_key: str = "group", seed: int = 0,
                           batch_size: int = 64) -> Dict[str, float]:
    """Image <-> report retrieval among ``num_candidates`` studies (:func:`bidirectional_retrieval`).

    Images and reports of one study (equal ``group_key``) are correct for each other; without that
    field only an item's own pair is. Keys ``image2report_R@k``, ``report2image_R@k``, median and mean rank.
    """
    loader = loader if isinstance(loader, DataLoader) else sample_loader(loader, batch_size)
    out = embed_loader(model, loader, [image_modality, text_modality], progress=False, fields=[group_key])
    groups = group_ids(out[group_key]) if group_key in out else None
    return bidirectional_retrieval(out[image_modality], out[text_modality], groups, groups, ks,
                                   names=("image", "report"), num_candidates=num_candidates, seed=seed)
