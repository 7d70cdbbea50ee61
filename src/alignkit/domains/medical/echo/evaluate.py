"""Echo evaluation: views, EF, findings and video-report retrieval on held-out studies; ``EVALUATORS["echo_study"]``.

Figures (all on the test split's studies, the training split as the retrieval index / probe data):

- ``view/accuracy`` and ``view_confusion.png`` (rows true view, columns predicted);
- EF by retrieval (mean EF of the top-``k`` training reports nearest each study embedding) and by a ridge probe on
  the study embeddings: ``ef/{retrieval,probe}_{mae,r2}``, beside ``ef/mean_mae`` (predicting the training mean);
- findings by retrieval (the fraction of the top-``k`` studies with the finding): ``findings/auroc/<name>`` and
  ``findings/auroc_mean``;
- ``retrieval/video2report_R@k`` and ``report2video_R@k`` (a video's correct reports: its study's);
- :func:`plot_section_attention`: a study's per-section attention over its videos.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Dict, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from alignkit.core import plots
from alignkit.core.evaluators import Ks
from alignkit.core.metrics import bidirectional_ranks, confusion_matrix, multilabel_auroc, rank_metrics
from alignkit.core.params import AT_LEAST_ONE, NON_NEGATIVE
from alignkit.core.registry import EVALUATORS, ConfigError
from alignkit.domains.medical.echo.interpret import StudySet, embed_studies, retrieve_labels
from alignkit.domains.medical.echo.models import EchoClipModule


def regression_metrics(pred: Tensor, target: Tensor) -> Dict[str, float]:
    """``mae = mean |p - y|``, ``r2 = 1 - sum (p - y)^2 / sum (y - mean y)^2`` over pairs with finite values."""
    keep = pred.isfinite() & target.isfinite()
    p, y = pred[keep].double(), target[keep].double()
    return {"mae": float((p - y).abs().mean()), "r2": float(1 - (p - y).pow(2).sum() / (y - y.mean()).pow(2).sum())}


def ridge_regression(train_x: Tensor, train_y: Tensor, test_x: Tensor, alpha: float = 1.0) -> Tensor:
    """Ridge on standardised features: ``w = (X^T X + alpha I)^-1 X^T (y - mean y)``; returns ``test_x``'s
    predictions ``(M,)``. Rows of ``train_y`` that are NaN are left out."""
    keep = train_y.isfinite()
    x, y = train_x[keep].double(), train_y[keep].double()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    xs = (x - mu) / sd
    w = torch.linalg.solve(xs.T @ xs + alpha * torch.eye(xs.shape[1], dtype=xs.dtype), xs.T @ (y - y.mean()))
    return (((test_x.double() - mu) / sd) @ w + y.mean()).float()


def study_metrics(train: StudySet, test: StudySet, finding_names: Sequence[str], k: int = 5,
                  ks: Sequence[int] = (1, 5, 10), ridge_alpha: float = 10.0,
                  study_embeddings: Optional[Tensor] = None) -> Dict[str, float]:
    """EF and findings (retrieval and probe) and video-report retrieval of ``test`` against ``train`` (see the
    module docstring). ``study_embeddings``: the test studies' embeddings ``(B, D)`` (default the mean of their
    videos); the training studies' always come from their reports."""
    query = test.mean_study() if study_embeddings is None else study_embeddings
    values = torch.cat([train.ef[:, None], train.labels], dim=1)
    retrieved = retrieve_labels(query, train.report, values, k).pred
    metrics: Dict[str, float] = {"ef/mean_mae": regression_metrics(torch.full_like(test.ef, float(train.ef.mean())),
                                                                    test.ef)["mae"]}
    metrics.update({f"ef/retrieval_{m}": v for m, v in regression_metrics(retrieved[:, 0], test.ef).items()})
    probe = ridge_regression(train.mean_study(), train.ef, test.mean_study(), ridge_alpha)
    metrics.update({f"ef/probe_{m}": v for m, v in regression_metrics(probe, test.ef).items()})
    if len(finding_names):
        auroc = multilabel_auroc(retrieved[:, 1:].nan_to_num(0.0), test.labels, list(finding_names))
        metrics.update({("findings/auroc_mean" if n == "mean" else f"findings/auroc/{n}"): v for n, v in auroc.items()})
    r_vr, r_rv = bidirectional_ranks(test.video, test.report[test.study], test.study, test.study)
    metrics.update(rank_metrics(r_vr, ks, "retrieval/video2report_"))
    metrics.update(rank_metrics(r_rv, ks, "retrieval/report2video_"))
    return metrics


def view_metrics(test: StudySet, views: Sequence[str], out_dir: Optional[Path] = None) -> Dict[str, float]:
    """``view/accuracy`` over the videos with a known view; with ``out_dir`` writes ``view_confusion.png``."""
    known = test.view_labels >= 0
    if not bool(known.any()):
        return {}
    pred, labels = test.view_logits[known].argmax(1), test.view_labels[known]
    if out_dir is not None:
        plots.plot_confusion_matrix(confusion_matrix(pred, labels, len(views)), list(views),
                                    Path(out_dir) / "view_confusion.png")
    return {"view/accuracy": float((pred == labels).float().mean())}


def plot_section_attention(weights: Tensor, sections: Sequence[str], videos: Sequence[str],
                           path: str | Path, title: str = "") -> Path:
    """Heat map of one study's attention ``(S, N)``: rows sections, columns its videos (e.g. ``"name (view)"``)."""
    w = weights.detach().cpu().numpy()
    if w.shape != (len(sections), len(videos)):
        raise ValueError(f"attention {w.shape} does not match {len(sections)} sections x {len(videos)} videos")
    fig = plots.new_figure(2.5 + 1.1 * len(videos), 1.5 + 0.35 * len(sections))
    ax = fig.add_subplot()
    im = ax.imshow(w, cmap="magma", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="attention weight")
    ax.set_xticks(np.arange(len(videos)), labels=list(videos), rotation=30, ha="right", fontsize=8)
    ax.set_yticks(np.arange(len(sections)), labels=list(sections), fontsize=8)
    for (i, j), v in np.ndenumerate(w):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="black" if v > 0.5 else "white")
    ax.set_title(title or "section attention over the study's videos")
    return plots.save_figure(fig, path)


@EVALUATORS.register("echo_study")
class EchoStudyEvaluator:
    """Views, EF, findings and video-report retrieval of an ``echo-clip`` model (:func:`study_metrics`,
    :func:`view_metrics`) with the train split as index; writes ``view_confusion.png``.

    Args:
        k: studies retrieved per query; ks: R@K cut-offs; ridge_alpha: the EF probe's ridge penalty.
    """

    def __init__(self, k: Annotated[int, AT_LEAST_ONE] = 5, ks: Ks = (1, 5, 10),
                 ridge_alpha: Annotated[float, NON_NEGATIVE] = 10.0):
        self.k, self.ks, self.ridge_alpha = k, tuple(ks), ridge_alpha

    def __call__(self, model: Any, train_loader: Any, test_loader: Any, out_dir: Path) -> Dict[str, float]:
        module = getattr(model, "module", model)
        if not isinstance(module, EchoClipModule):
            raise ConfigError(f"evaluator 'echo_study' needs an echo-clip model (model.name: echo-clip); got "
                              f"{type(module).__name__}")
        train, test = embed_studies(module, train_loader), embed_studies(module, test_loader)
        names = getattr(test_loader.dataset, "finding_names", [])
        return {**view_metrics(test, module.views, Path(out_dir)),
                **study_metrics(train, test, names, self.k, self.ks, self.ridge_alpha)}
