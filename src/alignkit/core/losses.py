"""Contrastive alignment losses: each a pure function plus a thin ``nn.Module`` in ``LOSSES``.

Every module's ``forward(a, b, **extras) -> LossOutput`` takes two ``(B, D)`` L2-normalised
embedding batches whose row ``i`` is a positive pair. Extras a loss may use: ``groups_a``,
``groups_b`` (``(B,)`` ids, equal ids are positives), ``teacher_a``, ``teacher_b`` (EMA-teacher
embeddings) and ``alpha`` (distillation weight); a loss ignores the extras it does not use.

Distributed: under DDP every loss all-gathers the other ranks' embeddings *with* gradients and
scores its ``B`` local rows against the ``W * B`` global ones, normalised by the local batch.
The mean over ranks of the local losses is then the single-process loss of the global batch, and
DDP's gradient averaging yields exactly that loss's gradients.

Chunking and precision: the InfoNCE and sigmoid losses run through :func:`alignkit.core.blockwise.blockwise`,
which never holds more than a ``(chunk, N)`` block of logits (the forward keeps per-line statistics, the
backward recomputes each block; ``chunk_size=None`` is a single block) and keeps float32 losses near zero
exact to about 1e-8 relative.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.core.blockwise import BlockKernel, InfoNCEKernel, MultiPositiveKernel, SigmoidKernel, blockwise
from alignkit.core.distributed import gather_no_grad, gather_with_grad, is_distributed, local_row_offset
from alignkit.core.params import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, OneOf, Range
from alignkit.core.registry import LOSSES, ConfigError

ChunkSize = Optional[Annotated[int, AT_LEAST_ONE]]
"""Rows of logits per block (``None``: all rows in one block)."""


@dataclass
class LossOutput:
    """A scalar training loss and detached scalars to log (``logit_scale``, ``accuracy``, ...)."""

    loss: Tensor
    metrics: Dict[str, Tensor] = field(default_factory=dict)


# --------------------------------------------------------------------------- pure losses
def logit_multiplier(logit_scale: Tensor, max_logit_scale: float) -> Tensor:
    """``s = exp(min(logit_scale, log(max_logit_scale)))``, the multiplier of the cosine logits.

    The cap is applied to the log, where the clamp's gradient is inclusive: a ``logit_scale`` exactly at the
    cap (``init_temperature = 1 / max``, or a parameter put back there by :func:`clamp_logit_scales_`) still
    receives its gradient and can learn back down. (Clamping ``exp(logit_scale)`` instead loses it for good:
    ``exp(float32(log 100)) = 100.0000076`` is already past the cap.)
    """
    return logit_scale.clamp(max=math.log(max_logit_scale)).exp()


@torch.no_grad()
def clamp_logit_scales_(module: nn.Module) -> None:
    """Clamp in place every learnable ``logit_scale`` in ``module`` (a loss with a ``max_logit_scale``) to
    ``<= log(max_logit_scale)``, as open_clip does after each optimiser step, so a scale the optimiser pushed
    past the cap sits at the cap, where it receives gradient again."""
    for sub in module.modules():
        scale = getattr(sub, "logit_scale", None)
        cap = getattr(sub, "max_logit_scale", None)
        if isinstance(scale, nn.Parameter) and cap is not None:
            scale.clamp_(max=math.log(float(cap)))


def _check_pair(a: Tensor, b: Tensor, where: str) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"{where}: expected a and b of equal shape (B, D), got {tuple(a.shape)} and {tuple(b.shape)}")


def _both_or_neither(x: Optional[Tensor], y: Optional[Tensor], names: str, where: str) -> bool:
    if (x is None) != (y is None):
        raise ValueError(f"{where}: pass both {names} or neither")
    return x is not None


def _symmetric_infonce(a: Tensor, b: Tensor, scale: Tensor, *, mode: str, smoothing: float,
                       groups_a: Optional[Tensor], groups_b: Optional[Tensor],
                       teacher_a: Optional[Tensor], teacher_b: Optional[Tensor], alpha: float,
                       chunk_size: Optional[int], distributed: bool) -> Tensor:
    """``1/2 [mean_i CE(row i of s a bᵀ) + mean_j CE(row j of s b aᵀ)]`` over the (global) batch."""
    rows, dtype = a.shape[0], torch.promote_types(a.dtype, torch.float32)
    a, b, scale = a.to(dtype), b.to(dtype), scale.to(dtype)
    if teacher_a is not None:
        teacher_a, teacher_b = teacher_a.detach().to(dtype), teacher_b.detach().to(dtype)
    teacher_scale = scale.detach() if teacher_a is not None else None

    def one_way(x: Tensor, y: Tensor, *, teacher_x: Optional[Tensor], teacher_y: Optional[Tensor],
                **kw: Any) -> Tensor:
        if mode == "logsum":
            kernel: BlockKernel = MultiPositiveKernel(x.shape[0], y.shape[0], x.detach(), **kw)
        else:
            kernel = InfoNCEKernel(x.shape[0], y.shape[0], x.detach(), smoothing=smoothing, teacher_x=teacher_x,
                                    teacher_y=teacher_y, teacher_scale=teacher_scale, alpha=alpha,
                                    chunk=chunk_size or rows, **kw)
        return blockwise(x, y, scale, None, kernel, chunk_size)

    if not (distributed and is_distributed()):
        return one_way(a, b, offset=0, columns=True, groups_x=groups_a, groups_y=groups_b,
                       teacher_x=teacher_a, teacher_y=teacher_b) / (2 * rows)

    def gathered(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else gather_no_grad(t)

    offset = local_row_offset(rows)
    a_all, b_all = gather_with_grad(a), gather_with_grad(b)
    a_to_b = one_way(a, b_all, offset=offset, columns=False, groups_x=groups_a, groups_y=gathered(groups_b),
                     teacher_x=teacher_a, teacher_y=gathered(teacher_b))
    b_to_a = one_way(b, a_all, offset=offset, columns=False, groups_x=groups_b, groups_y=gathered(groups_a),
                     teacher_x=teacher_b, teacher_y=gathered(teacher_a))
    return (a_to_b + b_to_a) / (2 * rows)


def clip_loss(a: Tensor, b: Tensor, logit_scale: Tensor, *, max_logit_scale: float = 100.0,
              label_smoothing: float = 0.0, teacher_a: Optional[Tensor] = None, teacher_b: Optional[Tensor] = None,
              alpha: float = 0.4, chunk_size: Optional[int] = None, distributed: bool = True) -> Tensor:
    """Symmetric InfoNCE (CLIP): ``L = 1/2 [CE(s a bᵀ, I) + CE(s b aᵀ, I)]``, ``s = min(exp(logit_scale), max)``.

    ``a``, ``b``: ``(B, D)``; ``logit_scale``: scalar log of the logit multiplier. CE is the mean
    over rows of ``-sum_j q_ij log softmax_j``. Targets ``q = (1 - eps) t + eps / N`` (label
    smoothing ``eps``, ``N`` columns) with ``t = I``, or, given the EMA-teacher embeddings
    ``teacher_a``, ``teacher_b``, the ALBEF momentum-distillation targets
    ``t = alpha * softmax(s_teacher ta tbᵀ) + (1 - alpha) I`` (row-wise for ``a -> b``, and
    ``softmax(s tb taᵀ)`` for ``b -> a``; ``s_teacher = s`` without gradient).
    ``chunk_size`` rows per block bounds the logits memory to ``O(chunk_size * B)``.
    """
    _check_pair(a, b, "clip_loss")
    if _both_or_neither(teacher_a, teacher_b, "teacher_a and teacher_b", "clip_loss"):
        _check_pair(teacher_a, teacher_b, "clip_loss teacher")
    else:
        alpha = 0.0
    scale = logit_multiplier(logit_scale, max_logit_scale)
    return _symmetric_infonce(a, b, scale, mode="linear", smoothing=label_smoothing,
                              groups_a=None, groups_b=None, teacher_a=teacher_a, teacher_b=teacher_b, alpha=alpha,
                              chunk_size=chunk_size, distributed=distributed)


MULTI_POSITIVE_MODES = ("logsum", "supcon")


def multi_positive_infonce_loss(a: Tensor, b: Tensor, logit_scale: Tensor, *, groups_a: Optional[Tensor] = None,
                                groups_b: Optional[Tensor] = None, mode: str = "logsum",
                                max_logit_scale: float = 100.0, chunk_size: Optional[int] = None,
                                distributed: bool = True) -> Tensor:
    """InfoNCE with several positives per anchor, symmetric in both directions.

    Positives ``P(i) = {j : groups_a[i] == groups_b[j]}``; ``p_ij = softmax_j(s a_i·b_j)``.

    * ``mode="logsum"`` (log of summed positive probability, MIL-NCE / UniCL):
      ``L_i = -log sum_{j in P(i)} p_ij``;
    * ``mode="supcon"`` (mean over positives of the log probability, SupCon "out"):
      ``L_i = -1/|P(i)| sum_{j in P(i)} log p_ij``.

    ``L = 1/2 [mean_i L_i(a -> b) + mean_j L_j(b -> a)]``. Without groups the positives are
    ``j = i`` and both modes equal :func:`clip_loss`. Every sample needs at least one positive.
    """
    _check_pair(a, b, "multi_positive_infonce_loss")
    if mode not in MULTI_POSITIVE_MODES:
        raise ValueError(f"multi_positive_infonce_loss: unknown mode '{mode}'; use one of {MULTI_POSITIVE_MODES}")
    if _both_or_neither(groups_a, groups_b, "groups_a and groups_b", "multi_positive_infonce_loss"):
        if groups_a.shape != (a.shape[0],) or groups_b.shape != (b.shape[0],):
            raise ValueError(f"multi_positive_infonce_loss: groups must be (B,)={a.shape[0]} ids, got "
                             f"{tuple(groups_a.shape)} and {tuple(groups_b.shape)}")
    else:
        mode = "linear"  # one positive per row: both modes are the one-hot cross-entropy
    return _symmetric_infonce(a, b, logit_multiplier(logit_scale, max_logit_scale),
                              mode="linear" if mode == "supcon" else mode, smoothing=0.0,
                              groups_a=groups_a, groups_b=groups_b, teacher_a=None, teacher_b=None, alpha=0.0,
                              chunk_size=chunk_size, distributed=distributed)


def siglip_loss(a: Tensor, b: Tensor, logit_scale: Tensor, logit_bias: Tensor, *, max_logit_scale: float = 100.0,
                chunk_size: Optional[int] = None, distributed: bool = True) -> Tensor:
    """Sigmoid loss (SigLIP): ``L = -1/B sum_ij log sigmoid(z_ij (t a_i·b_j + bias))``.

    ``z_ij = +1`` for ``i = j`` and -1 otherwise, ``t = min(exp(logit_scale), max)``, ``B`` the
    local batch; the sum over ``j`` runs over the global batch under DDP.
    """
    _check_pair(a, b, "siglip_loss")
    rows = a.shape[0]
    if distributed and is_distributed():
        b, offset = gather_with_grad(b), local_row_offset(rows)
    else:
        offset = 0
    return blockwise(a, b, logit_multiplier(logit_scale, max_logit_scale), logit_bias, SigmoidKernel(offset),
                      chunk_size) / rows


# --------------------------------------------------------------------------- modules
def _register_scalar(module: nn.Module, name: str, value: float, learnable: bool) -> None:
    """A scalar parameter (trained) or persistent buffer (fixed) called ``name``."""
    tensor = torch.tensor(float(value))
    if learnable:
        module.register_parameter(name, nn.Parameter(tensor))
    else:
        module.register_buffer(name, tensor)


def _check_temperature(init_temperature: float, where: str) -> float:
    if init_temperature <= 0:
        raise ConfigError(f"{where}: init_temperature must be > 0, got {init_temperature}")
    return math.log(1.0 / init_temperature)


@LOSSES.register("clip")
class ClipLoss(nn.Module):
    """:func:`clip_loss` owning ``logit_scale = log(1 / init_temperature)``; uses ``teacher_a/b``, ``alpha`` extras."""

    def __init__(self, init_temperature: Annotated[float, POSITIVE] = 0.07, learnable_temperature: bool = True,
                 max_logit_scale: Annotated[float, POSITIVE] = 100.0,
                 label_smoothing: Annotated[float, Range(ge=0, lt=1)] = 0.0, chunk_size: ChunkSize = None,
                 distributed: bool = True):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"clip loss: label_smoothing must be in [0, 1), got {label_smoothing}")
        _register_scalar(self, "logit_scale", _check_temperature(init_temperature, "clip loss"),
                         learnable_temperature)
        self.max_logit_scale, self.label_smoothing = float(max_logit_scale), float(label_smoothing)
        self.chunk_size, self.distributed = chunk_size, distributed

    def forward(self, a: Tensor, b: Tensor, teacher_a: Optional[Tensor] = None, teacher_b: Optional[Tensor] = None,
                alpha: float = 0.4, **extras: Any) -> LossOutput:
        loss = clip_loss(a, b, self.logit_scale, max_logit_scale=self.max_logit_scale,
                         label_smoothing=self.label_smoothing, teacher_a=teacher_a, teacher_b=teacher_b, alpha=alpha,
                         chunk_size=self.chunk_size, distributed=self.distributed)
        return LossOutput(loss, {"logit_scale": logit_multiplier(self.logit_scale, self.max_logit_scale).detach()})


@LOSSES.register("multi_positive")
class MultiPositiveInfoNCELoss(nn.Module):
    """:func:`multi_positive_infonce_loss` owning its ``logit_scale``; uses ``groups_a/b`` extras."""

    def __init__(self, init_temperature: Annotated[float, POSITIVE] = 0.07, learnable_temperature: bool = True,
                 max_logit_scale: Annotated[float, POSITIVE] = 100.0,
                 mode: Annotated[str, OneOf(MULTI_POSITIVE_MODES)] = "logsum", chunk_size: ChunkSize = None,
                 distributed: bool = True):
        super().__init__()
        if mode not in MULTI_POSITIVE_MODES:
            raise ConfigError(f"multi_positive loss: unknown mode '{mode}'; use one of {MULTI_POSITIVE_MODES}")
        _register_scalar(self, "logit_scale", _check_temperature(init_temperature, "multi_positive loss"),
                         learnable_temperature)
        self.max_logit_scale, self.mode = float(max_logit_scale), mode
        self.chunk_size, self.distributed = chunk_size, distributed

    def forward(self, a: Tensor, b: Tensor, groups_a: Optional[Tensor] = None, groups_b: Optional[Tensor] = None,
                **extras: Any) -> LossOutput:
        loss = multi_positive_infonce_loss(a, b, self.logit_scale, groups_a=groups_a, groups_b=groups_b,
                                           mode=self.mode, max_logit_scale=self.max_logit_scale,
                                           chunk_size=self.chunk_size, distributed=self.distributed)
        return LossOutput(loss, {"logit_scale": logit_multiplier(self.logit_scale, self.max_logit_scale).detach()})


@LOSSES.register("siglip")
class SigLipLoss(nn.Module):
    """:func:`siglip_loss` owning ``logit_scale`` (log of ``t``) and ``logit_bias``."""

    def __init__(self, init_logit_scale: float = math.log(10.0), init_logit_bias: float = -10.0,
                 learnable: bool = True, max_logit_scale: Annotated[float, POSITIVE] = 100.0,
                 chunk_size: ChunkSize = None, distributed: bool = True):
        super().__init__()
        _register_scalar(self, "logit_scale", init_logit_scale, learnable)
        _register_scalar(self, "logit_bias", init_logit_bias, learnable)
        self.max_logit_scale, self.chunk_size, self.distributed = float(max_logit_scale), chunk_size, distributed

    def forward(self, a: Tensor, b: Tensor, **extras: Any) -> LossOutput:
        loss = siglip_loss(a, b, self.logit_scale, self.logit_bias, max_logit_scale=self.max_logit_scale,
                           chunk_size=self.chunk_size, distributed=self.distributed)
        return LossOutput(loss, {"logit_scale": logit_multiplier(self.logit_scale, self.max_logit_scale).detach(),
                                 "logit_bias": self.logit_bias.detach()})


@LOSSES.register("matryoshka")
class MatryoshkaLoss(nn.Module):
    """Matryoshka: ``L = sum_k w_k * inner(n(a[:, :d_k]), n(b[:, :d_k]))``, ``n`` = L2 normalisation.

    ``loss`` is a module or a registered loss name built with ``loss_params`` (so a YAML config
    can say ``loss: clip, loss_params: {label_smoothing: 0.1}``); one inner loss (one temperature)
    serves every prefix. ``weights`` (default equal) are normalised to sum to 1. Teacher extras
    are cut and re-normalised like the embeddings.
    """

    def __init__(self, dims: Sequence[Annotated[int, AT_LEAST_ONE]], loss: Union[str, nn.Module] = "clip",
                 loss_params: Optional[Dict[str, Any]] = None,
                 weights: Optional[Sequence[Annotated[float, NON_NEGATIVE]]] = None):
        super().__init__()
        if not dims or any(int(d) < 1 for d in dims):
            raise ConfigError(f"matryoshka loss: dims must be a non-empty list of positive sizes, got {dims}")
        weights = [1.0] * len(dims) if weights is None else [float(w) for w in weights]
        if len(weights) != len(dims) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"matryoshka loss: weights {weights} must be {len(dims)} non-negative numbers "
                              "with a positive sum, one per entry of dims")
        if isinstance(loss, str):
            self.inner = LOSSES.build(loss, where="matryoshka.loss_params", **dict(loss_params or {}))
        elif loss_params:
            raise ConfigError("matryoshka loss: loss_params only apply when loss is a registered name")
        else:
            self.inner = loss
        self.dims = [int(d) for d in dims]
        self.weights = [w / sum(weights) for w in weights]

    def forward(self, a: Tensor, b: Tensor, **extras: Any) -> LossOutput:
        if max(self.dims) > a.shape[1]:
            raise ValueError(f"matryoshka loss: dims {self.dims} exceed the embedding size {a.shape[1]}")
        total, metrics = a.new_zeros(()), {}
        for dim, weight in zip(self.dims, self.weights):
            cut = {k: F.normalize(v[:, :dim], dim=-1) if k in ("teacher_a", "teacher_b") and v is not None else v
                   for k, v in extras.items()}
            out = self.inner(F.normalize(a[:, :dim], dim=-1), F.normalize(b[:, :dim], dim=-1), **cut)
            total = total + weight * out.loss
            metrics[f"loss@{dim}"] = out.loss.detach()
            metrics.update({f"{k}@{dim}": v for k, v in out.metrics.items()})
        return LossOutput(total, metrics)


# --------------------------------------------------------------------------- momentum distillation
class EMATeacher(nn.Module):
    """A frozen deep copy of ``module`` tracking it by exponential moving average (ALBEF, MoCo).

    ``update(student)``: ``p_t <- decay * p_t + (1 - decay) * p_s`` for every parameter, buffers
    (e.g. batch-norm statistics) copied. Calling the teacher runs the copy without gradients.
    """

    def __init__(self, module: nn.Module, decay: Annotated[float, FRACTION] = 0.995):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ConfigError(f"EMA teacher: decay must be in [0, 1], got {decay}")
        self.module = copy.deepcopy(module).requires_grad_(False)
        self.decay = float(decay)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        params, buffers = dict(student.named_parameters()), dict(student.named_buffers())
        for name, p in self.module.named_parameters():
            if name not in params:
                raise ValueError(f"EMA teacher: the student has no parameter '{name}'; update() needs the module "
                                 "the teacher was copied from (unwrap DDP/compile wrappers first)")
            p.lerp_(params[name].detach(), 1.0 - self.decay)
        for name, buf in self.module.named_buffers():
            buf.copy_(buffers[name])

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return self.module(*args, **kwargs)


# --------------------------------------------------------------------------- image-text matching
def sample_hard_negatives(sim: Tensor, groups: Optional[Tensor] = None, col_groups: Optional[Tensor] = None, *,
                          offset: int = 0, generator: Optional[torch.Generator] = None) -> Tensor:
    """``(M,)`` LongTensor: for each row of ``sim (M, N)`` one column drawn from ``softmax_j(sim_ij)``
    over its negatives.

    Positives (never drawn) are ``j = i + offset`` and, with ``groups (M,)``, every ``j`` with
    ``col_groups[j] == groups[i]`` (``col_groups`` defaults to ``groups``).
    """
    rows, cols = sim.shape
    positive = torch.zeros(rows, cols, dtype=torch.bool, device=sim.device)
    positive.diagonal(offset).fill_(True)
    if groups is not None:
        positive |= groups[:, None] == (groups if col_groups is None else col_groups)[None, :]
    full = positive.all(1).nonzero().flatten()
    if len(full):
        raise ValueError(f"sample_hard_negatives: row {int(full[0])} has no negative (every column is a positive); "
                         "the batch needs samples of at least two groups")
    probs = sim.detach().float().masked_fill(positive, -math.inf).softmax(1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@LOSSES.register("itm")
class ITMHead(nn.Module):
    """Image-text matching (ALBEF): a binary pair classifier trained on positives and hard negatives.

    A pair ``(x, y)`` is scored by ``MLP([x, y, x*y, |x-y|]) -> 2`` logits (class 1 = matched).
    Per batch: the ``B`` positive pairs ``(a_i, b_i)``, for each ``a_i`` a negative ``b_j`` and for
    each ``b_j`` a negative ``a_i`` drawn by :func:`sample_hard_negatives` from
    ``softmax(a bᵀ / negative_temperature)``; ``L = CE`` over these ``3B`` pairs. With
    ``groups_a/b`` extras, same-group pairs are never used as negatives. ``dim`` is the
    embedding size ``D``; ``hidden`` defaults to ``dim``.
    """

    def __init__(self, dim: Annotated[int, AT_LEAST_ONE], hidden: Optional[Annotated[int, AT_LEAST_ONE]] = None,
                 negative_temperature: Annotated[float, POSITIVE] = 0.07, distributed: bool = True):
        super().__init__()
        hidden = hidden or dim
        self.dim, self.negative_temperature, self.distributed = int(dim), float(negative_temperature), distributed
        self.mlp = nn.Sequential(nn.Linear(4 * dim, hidden), nn.GELU(), nn.Linear(hidden, 2))

    def score(self, x: Tensor, y: Tensor) -> Tensor:
        """``(P, 2)`` match logits of the pairs ``(x_p, y_p)``, ``x, y: (P, dim)``."""
        return self.mlp(torch.cat([x, y, x * y, (x - y).abs()], dim=-1))

    def forward(self, a: Tensor, b: Tensor, groups_a: Optional[Tensor] = None, groups_b: Optional[Tensor] = None,
                **extras: Any) -> LossOutput:
        _check_pair(a, b, "itm loss")
        if a.shape[1] != self.dim:
            raise ValueError(f"itm loss: built with dim={self.dim} but got embeddings of size {a.shape[1]}; "
                             "set the loss parameter dim to the model's embed_dim")
        rows = a.shape[0]
        with_groups = groups_a is not None and groups_b is not None
        if self.distributed and is_distributed():
            a_all, b_all, offset = gather_with_grad(a), gather_with_grad(b), local_row_offset(rows)
            ga_all, gb_all = (gather_no_grad(groups_a), gather_no_grad(groups_b)) if with_groups else (None, None)
        else:
            a_all, b_all, offset = a, b, 0
            ga_all, gb_all = (groups_a, groups_b) if with_groups else (None, None)
        with torch.no_grad():
            neg_b = sample_hard_negatives(a @ b_all.T / self.negative_temperature,
                                          groups_a if with_groups else None, gb_all, offset=offset)
            neg_a = sample_hard_negatives(b @ a_all.T / self.negative_temperature,
                                          groups_b if with_groups else None, ga_all, offset=offset)
        logits = self.score(torch.cat([a, a, a_all[neg_a]]), torch.cat([b, b_all[neg_b], b]))
        labels = torch.zeros(3 * rows, dtype=torch.long, device=a.device)
        labels[:rows] = 1
        loss = F.cross_entropy(logits, labels)
        return LossOutput(loss, {"accuracy": (logits.argmax(1) == labels).float().mean().detach()})
