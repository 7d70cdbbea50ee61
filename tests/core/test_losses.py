"""Contrastive losses against hand-written full-matrix references (values and gradients)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.core.blockwise import momentum_distillation_targets
from alignkit.core.losses import (ClipLoss, EMATeacher, ITMHead, LossOutput, MatryoshkaLoss, MultiPositiveInfoNCELoss,
                                  SigLipLoss, clamp_logit_scales_, clip_loss, multi_positive_infonce_loss,
                                  sample_hard_negatives, siglip_loss)
from alignkit.core.registry import LOSSES, ConfigError

B, D = 13, 8
CHUNKS = [None, 1, 4, 5, 13, 64]  # 4 and 5 do not divide B


def unit(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return F.normalize(torch.randn(*shape, dtype=dtype), dim=-1).requires_grad_()


def grads(loss: Tensor, *inputs: Tensor) -> list:
    return list(torch.autograd.grad(loss, inputs))


def assert_same(got: Tensor, want: Tensor, got_grads: list, want_grads: list, atol: float = 1e-5) -> None:
    torch.testing.assert_close(got, want, atol=atol, rtol=0, check_dtype=False)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, atol=atol, rtol=0, check_dtype=False)


# ------------------------------------------------------------------ hand-written references
def ref_clip(a: Tensor, b: Tensor, logit_scale: Tensor, eps: float = 0.0, teacher=None, alpha: float = 0.4,
             max_scale: float = 100.0) -> Tensor:
    s = logit_scale.clamp(max=math.log(max_scale)).exp()  # the cap on the log: a scale at the cap keeps its gradient
    logits = s * a @ b.T
    n = len(a)
    eye = torch.eye(n, dtype=a.dtype)
    if teacher is None:
        q_ab = q_ba = eye
    else:
        ta, tb = teacher
        q_ab = alpha * torch.softmax(s.detach() * ta @ tb.T, 1) + (1 - alpha) * eye
        q_ba = alpha * torch.softmax(s.detach() * tb @ ta.T, 1) + (1 - alpha) * eye
    q_ab, q_ba = (1 - eps) * q_ab + eps / n, (1 - eps) * q_ba + eps / n
    ce_ab = -(q_ab * torch.log_softmax(logits, 1)).sum(1).mean()
    ce_ba = -(q_ba * torch.log_softmax(logits.T, 1)).sum(1).mean()
    return (ce_ab + ce_ba) / 2


def ref_siglip(a: Tensor, b: Tensor, logit_scale: Tensor, bias: Tensor) -> Tensor:
    logits = logit_scale.exp() * a @ b.T + bias
    z = 2 * torch.eye(len(a), dtype=a.dtype) - 1
    return -F.logsigmoid(z * logits).sum() / len(a)


def ref_multi_positive(a: Tensor, b: Tensor, logit_scale: Tensor, ga: Tensor, gb: Tensor, mode: str) -> Tensor:
    logits = logit_scale.exp() * a @ b.T
    total = 0.0
    for lg, mask in ((logits, ga[:, None] == gb[None, :]), (logits.T, gb[:, None] == ga[None, :])):
        logp = torch.log_softmax(lg, 1)
        per_row = []
        for i in range(len(lg)):
            pos = logp[i][mask[i]]
            per_row.append(-torch.logsumexp(pos, 0) if mode == "logsum" else -pos.mean())
        total = total + torch.stack(per_row).mean()
    return total / 2


def ref_multi_positive_fast(a: Tensor, b: Tensor, logit_scale: Tensor, ga: Tensor, gb: Tensor, mode: str) -> Tensor:
    """:func:`ref_multi_positive` with the row loop vectorised (for large batches)."""
    logits = logit_scale.exp() * a @ b.T
    total = 0.0
    for lg, mask in ((logits, ga[:, None] == gb[None, :]), (logits.T, gb[:, None] == ga[None, :])):
        logp = torch.log_softmax(lg, 1)
        if mode == "logsum":
            per_row = -logp.masked_fill(~mask, -math.inf).logsumexp(1)
        else:
            per_row = -(logp * mask).sum(1) / mask.sum(1)
        total = total + per_row.mean()
    return total / 2


# ------------------------------------------------------------------ CLIP
@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_clip_matches_reference(chunk, eps):
    torch.manual_seed(0)
    a, b = unit(B, D), unit(B, D)
    ls = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    want = ref_clip(a, b, ls, eps)
    got = clip_loss(a, b, ls, label_smoothing=eps, chunk_size=chunk)
    assert_same(got, want, grads(got, a, b, ls), grads(want, a, b, ls))


@pytest.mark.parametrize("chunk", [None, 3, 7])
def test_clip_momentum_distillation_matches_albef_targets(chunk):
    torch.manual_seed(1)
    a, b = unit(B, D), unit(B, D)
    ta, tb = unit(B, D).detach(), unit(B, D).detach()
    ls = torch.tensor(2.0, requires_grad=True)
    want = ref_clip(a, b, ls, 0.1, teacher=(ta, tb), alpha=0.3)
    got = clip_loss(a, b, ls, label_smoothing=0.1, teacher_a=ta, teacher_b=tb, alpha=0.3, chunk_size=chunk)
    assert_same(got, want, grads(got, a, b, ls), grads(want, a, b, ls))
    assert not torch.allclose(got, ref_clip(a, b, ls, 0.1))  # the teacher changes the loss


def test_momentum_distillation_targets_formula():
    torch.manual_seed(2)
    ta, tb = unit(5, D).detach(), unit(7, D).detach()
    q = momentum_distillation_targets(ta, tb, torch.tensor(10.0), 0.4, offset=2)
    want = 0.4 * torch.softmax(10 * ta @ tb.T, 1)
    want[torch.arange(5), torch.arange(5) + 2] += 0.6
    torch.testing.assert_close(q, want)
    torch.testing.assert_close(q.sum(1), torch.ones(5))


def test_clip_chunked_large_logits_within_1e5_of_float64_reference():
    """Float32 chunked values and gradients within 1e-5 of an exact (float64) full-matrix reference, s = 100."""
    torch.manual_seed(3)
    a, b = unit(300, 32), unit(300, 32)
    ls = torch.tensor(math.log(100.0), requires_grad=True)
    a64, b64 = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    ls64 = torch.tensor(math.log(100.0), dtype=torch.float64, requires_grad=True)  # the cap in either precision
    want = ref_clip(a64, b64, ls64, 0.1)
    want_g = grads(want, a64, b64, ls64)
    for chunk in (None, 64, 77):
        got = clip_loss(a, b, ls, label_smoothing=0.1, chunk_size=chunk)
        assert got.dtype == torch.float32
        assert_same(got, want, grads(got, a, b, ls), want_g, atol=1e-5)


def test_logit_scale_is_clamped_at_max():
    torch.manual_seed(4)
    a, b = unit(B, D), unit(B, D)
    ls = torch.tensor(math.log(1000.0), requires_grad=True)
    loss = clip_loss(a, b, ls)
    torch.testing.assert_close(loss, ref_clip(a, b, torch.tensor(math.log(100.0))))
    assert grads(loss, ls)[0].item() == 0.0
    module = ClipLoss(init_temperature=1 / 1000)
    assert module(a, b).metrics["logit_scale"].item() == pytest.approx(100.0)


@pytest.mark.parametrize("make", [lambda: ClipLoss(init_temperature=0.01),
                                  lambda: MultiPositiveInfoNCELoss(init_temperature=0.01),
                                  lambda: SigLipLoss(init_logit_scale=math.log(100.0))])
def test_temperature_at_the_cap_still_learns_back_down(make):
    """init_temperature 1/100 puts logit_scale at the cap (exp(float32(log 100)) = 100.0000076 > 100); it must still
    receive gradient, and a step on random pairs (where a softer softmax is better) must lower it."""
    torch.manual_seed(5)
    module = make()
    a, b = unit(32, D).detach(), unit(32, D).detach()
    module(a, b).loss.backward()
    grad = module.logit_scale.grad
    assert grad is not None and grad.item() > 0
    opt = torch.optim.SGD([module.logit_scale], lr=0.01)
    before = module.logit_scale.item()
    opt.step()
    assert module.logit_scale.item() < before


def test_temperature_pushed_past_the_cap_is_clamped_back_and_learns():
    """open_clip's in-place clamp after a step: a logit_scale the optimiser pushed past log(max) returns to the cap,
    where it has gradient again (AlignmentModule calls clamp_logit_scales_ after every training batch)."""
    torch.manual_seed(6)
    losses = nn.ModuleList([ClipLoss(), MatryoshkaLoss(dims=[4, 8], loss="clip"), ClipLoss(learnable_temperature=False,
                                                                                            init_temperature=0.001)])
    with torch.no_grad():
        losses[0].logit_scale.fill_(5.0)
        losses[1].inner.logit_scale.fill_(6.0)
    a, b = unit(16, D).detach(), unit(16, D).detach()
    assert grads(losses[0](a, b).loss, losses[0].logit_scale)[0].item() == 0.0  # past the cap: no gradient
    clamp_logit_scales_(losses)
    for scale in (losses[0].logit_scale, losses[1].inner.logit_scale):
        assert scale.item() == pytest.approx(math.log(100.0), abs=1e-6)
    assert losses[2].logit_scale.item() == pytest.approx(math.log(1000.0))  # fixed (buffer) scales are left alone
    assert grads(losses[0](a, b).loss, losses[0].logit_scale)[0].item() != 0.0


def near_pairs(n: int, d: int, noise: float, seed: int) -> tuple:
    """Float32-representable unit pairs ``b_i ~ a_i`` (float64 copies of float32 values) with near-zero losses."""
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    b = F.normalize(a + noise * torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    return a.float().double(), b.float().double()


@pytest.mark.parametrize("noise", [0.12, 0.16, 0.25])
def test_float32_infonce_within_1e6_of_float64_at_small_losses(noise):
    """Float32 InfoNCE (plain and chunked, CLIP and both multi-positive modes) within 1e-6 relative of the float64
    reference at losses down to 1e-3 (scale 100): per-line statistics never subtract two logits of size 100."""
    a, b = near_pairs(512, 64, noise, seed=7)
    scale = torch.tensor(math.log(100.0)).double()  # the float32 scale's value, so both sides solve the same problem
    groups = torch.arange(512) // 2  # pairs of samples share a group
    cases = {
        "clip": (lambda x, y, s, **kw: clip_loss(x, y, s, **kw), ref_clip(a, b, scale, max_scale=math.inf)),
        "logsum": (lambda x, y, s, **kw: multi_positive_infonce_loss(x, y, s, groups_a=groups, groups_b=groups,
                                                                     mode="logsum", **kw),
                   ref_multi_positive_fast(a, b, scale, groups, groups, "logsum")),
        "supcon": (lambda x, y, s, **kw: multi_positive_infonce_loss(x, y, s, groups_a=groups, groups_b=groups,
                                                                     mode="supcon", **kw),
                   ref_multi_positive_fast(a, b, scale, groups, groups, "supcon")),
    }
    losses = []
    for name, (loss_fn, want) in cases.items():
        losses.append(want.item())
        for chunk in (None, 100):
            got = loss_fn(a.float(), b.float(), scale.float(), chunk_size=chunk)
            assert got.dtype == torch.float32
            rel = abs(got.item() - want.item()) / want.item()
            assert rel < 1e-6, f"{name} chunk {chunk}: loss {want.item():.3e}, relative error {rel:.2e}"
    if noise == 0.12:
        assert min(losses) < 1e-3  # the smallest case goes below 1e-3


def test_float32_clip_gradient_at_small_loss_beats_plain_softmax():
    """Gradients at a loss of ~2e-3 stay within 5e-6 (relative norm) of float64, better than a float32 full
    softmax cross-entropy (which rounds p_ii near 1)."""
    a, b = near_pairs(512, 64, 0.16, seed=8)
    scale = torch.tensor(math.log(100.0)).double()
    a64, b64 = a.clone().requires_grad_(), b.clone().requires_grad_()
    want_g = grads(ref_clip(a64, b64, scale, max_scale=math.inf), a64)[0]
    a32, b32 = a.float().requires_grad_(), b.float().requires_grad_()
    for chunk in (None, 100):
        got_g = grads(clip_loss(a32, b32, scale.float(), chunk_size=chunk), a32)[0].double()
        assert ((got_g - want_g).norm() / want_g.norm()).item() < 5e-6
    naive_g = grads(ref_clip(a32, b32, scale.float()), a32)[0].double()
    assert ((naive_g - want_g).norm() / want_g.norm()).item() > ((got_g - want_g).norm() / want_g.norm()).item()


def test_clip_module_owns_temperature():
    torch.manual_seed(5)
    a, b = unit(B, D), unit(B, D)
    learned = ClipLoss(init_temperature=0.05, label_smoothing=0.1, chunk_size=4)
    assert isinstance(learned.logit_scale, nn.Parameter)
    assert learned.logit_scale.item() == pytest.approx(math.log(20.0))
    out = learned(a, b, groups_a=torch.zeros(B), unused_extra=1)  # foreign extras are ignored
    assert isinstance(out, LossOutput)
    torch.testing.assert_close(out.loss, ref_clip(a, b, learned.logit_scale, 0.1))
    out.loss.backward()
    assert learned.logit_scale.grad is not None and learned.logit_scale.grad != 0
    fixed = ClipLoss(learnable_temperature=False)
    assert "logit_scale" in dict(fixed.named_buffers()) and not list(fixed.parameters())


def test_chunk_size_must_be_positive():
    a, b = unit(B, D), unit(B, D)
    with pytest.raises(ValueError, match="chunk_size"):
        clip_loss(a, b, torch.tensor(1.0), chunk_size=0)


def test_half_precision_inputs_are_computed_in_float32():
    torch.manual_seed(6)
    a, b = unit(B, D), unit(B, D)
    ls = torch.tensor(2.0)
    got = clip_loss(a.detach().bfloat16(), b.detach().bfloat16(), ls, chunk_size=4)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref_clip(a.detach().bfloat16().float(), b.detach().bfloat16().float(), ls))


# ------------------------------------------------------------------ SigLIP
@pytest.mark.parametrize("chunk", CHUNKS)
def test_siglip_matches_reference(chunk):
    torch.manual_seed(7)
    a, b = unit(B, D), unit(B, D)
    ls = torch.tensor(math.log(10.0), requires_grad=True)
    bias = torch.tensor(-3.0, requires_grad=True)
    want = ref_siglip(a, b, ls, bias)
    got = siglip_loss(a, b, ls, bias, chunk_size=chunk)
    assert_same(got, want, grads(got, a, b, ls, bias), grads(want, a, b, ls, bias))


def test_siglip_module_defaults():
    torch.manual_seed(8)
    module = LOSSES.build("siglip")
    assert isinstance(module, SigLipLoss)
    assert module.logit_scale.item() == pytest.approx(math.log(10.0)) and module.logit_bias.item() == -10.0
    a, b = unit(B, D), unit(B, D)
    out = module(a, b)
    torch.testing.assert_close(out.loss, ref_siglip(a, b, module.logit_scale, module.logit_bias))
    out.loss.backward()
    assert module.logit_bias.grad is not None and module.logit_scale.grad is not None


# ------------------------------------------------------------------ multi-positive
GROUPS_A = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 5, 6, 7, 7])
GROUPS_B = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 5, 6, 7, 7])


@pytest.mark.parametrize("mode", ["logsum", "supcon"])
@pytest.mark.parametrize("chunk", [None, 1, 4, 13])
def test_multi_positive_matches_reference(mode, chunk):
    torch.manual_seed(9)
    a, b = unit(B, D), unit(B, D)
    ls = torch.tensor(2.5, requires_grad=True)
    want = ref_multi_positive(a, b, ls, GROUPS_A, GROUPS_B, mode)
    got = multi_positive_infonce_loss(a, b, ls, groups_a=GROUPS_A, groups_b=GROUPS_B, mode=mode, chunk_size=chunk)
    assert_same(got, want, grads(got, a, b, ls), grads(want, a, b, ls))


def test_multi_positive_with_different_group_layouts_per_side():
    """groups_a and groups_b need not be equal: each side's row uses the other side's ids."""
    torch.manual_seed(10)
    a, b = unit(6, D), unit(6, D)
    ga, gb = torch.tensor([0, 1, 1, 2, 3, 3]), torch.tensor([1, 0, 2, 3, 1, 3])
    ls = torch.tensor(2.0, requires_grad=True)
    for mode in ("logsum", "supcon"):
        want = ref_multi_positive(a, b, ls, ga, gb, mode)
        got = multi_positive_infonce_loss(a, b, ls, groups_a=ga, groups_b=gb, mode=mode, chunk_size=4)
        assert_same(got, want, grads(got, a, b, ls), grads(want, a, b, ls))


@pytest.mark.parametrize("mode", ["logsum", "supcon"])
def test_multi_positive_differs_from_clip_with_shared_groups_and_equals_it_without(mode):
    torch.manual_seed(11)
    a, b = unit(B, D), unit(B, D)
    ls = torch.tensor(2.5)
    clip = clip_loss(a, b, ls)
    grouped = multi_positive_infonce_loss(a, b, ls, groups_a=GROUPS_A, groups_b=GROUPS_B, mode=mode)
    assert abs(grouped.item() - clip.item()) > 1e-2
    unique = torch.arange(B) * 3
    torch.testing.assert_close(multi_positive_infonce_loss(a, b, ls, groups_a=unique, groups_b=unique, mode=mode), clip)
    torch.testing.assert_close(multi_positive_infonce_loss(a, b, ls, mode=mode), clip)
    module = LOSSES.build("multi_positive", mode=mode, init_temperature=math.exp(-2.5))
    torch.testing.assert_close(module(a, b).loss, clip)


def test_multi_positive_rejects_samples_without_partner():
    a, b = unit(4, D), unit(4, D)
    with pytest.raises(ValueError, match="no positive"):
        multi_positive_infonce_loss(a, b, torch.tensor(1.0), groups_a=torch.tensor([0, 1, 2, 9]),
                                    groups_b=torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ConfigError, match="mode"):
        MultiPositiveInfoNCELoss(mode="mean")


# ------------------------------------------------------------------ Matryoshka
def test_matryoshka_is_weighted_sum_of_inner_loss_on_renormalised_prefixes():
    torch.manual_seed(12)
    a, b = unit(B, 16), unit(B, 16)
    ta, tb = unit(B, 16).detach(), unit(B, 16).detach()
    loss = LOSSES.build("matryoshka", dims=[4, 8, 16], weights=[1.0, 1.0, 2.0], loss="clip",
                        loss_params={"init_temperature": 0.1, "label_smoothing": 0.1})
    assert isinstance(loss.inner, ClipLoss)
    out = loss(a, b, teacher_a=ta, teacher_b=tb, alpha=0.5)
    want = 0.0
    for d, w in ((4, 0.25), (8, 0.25), (16, 0.5)):
        cut = [F.normalize(t[:, :d], dim=-1) for t in (a, b, ta, tb)]
        want = want + w * ref_clip(cut[0], cut[1], torch.tensor(math.log(10.0)), 0.1, teacher=cut[2:], alpha=0.5)
    torch.testing.assert_close(out.loss, want)
    assert set(out.metrics) >= {"loss@4", "loss@8", "loss@16", "logit_scale@16"}


def test_matryoshka_rejects_bad_dims():
    with pytest.raises(ConfigError, match="weights"):
        MatryoshkaLoss(dims=[4, 8], weights=[1.0])
    with pytest.raises(ValueError, match="exceed"):
        MatryoshkaLoss(dims=[32])(unit(B, 16), unit(B, 16))


# ------------------------------------------------------------------ EMA teacher
def test_ema_teacher_update_formula_and_frozen_copy():
    torch.manual_seed(13)
    student = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    teacher = EMATeacher(student, decay=0.9)
    assert all(not p.requires_grad for p in teacher.parameters())
    before = {n: p.clone() for n, p in teacher.module.named_parameters()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    student(torch.randn(8, 4))  # moves the batch-norm running statistics
    teacher.update(student)
    for name, p_s in student.named_parameters():
        torch.testing.assert_close(dict(teacher.module.named_parameters())[name], 0.9 * before[name] + 0.1 * p_s)
    for name, buf in student.named_buffers():
        torch.testing.assert_close(dict(teacher.module.named_buffers())[name], buf)
    assert teacher(torch.randn(2, 4)).requires_grad is False
    with pytest.raises(ValueError, match="no parameter"):
        teacher.update(nn.Linear(4, 3))


# ------------------------------------------------------------------ ITM
def test_hard_negatives_never_pick_positives():
    torch.manual_seed(14)
    groups = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    sim = torch.randn(8, 8) * 3
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        neg = sample_hard_negatives(sim, groups, generator=gen)
        assert (groups[neg] != groups).all()
    # a rectangular (distributed-style) matrix: row i's own column is i + offset
    col_groups = torch.tensor([5, 6, 7, 0, 0, 1, 1, 1, 2, 3, 3])
    for _ in range(200):
        neg = sample_hard_negatives(torch.randn(8, 11), groups, col_groups, offset=3, generator=gen)
        assert (col_groups[neg] != groups).all() and (neg != torch.arange(8) + 3).all()
    with pytest.raises(ValueError, match="no negative"):
        sample_hard_negatives(torch.randn(3, 3), torch.zeros(3, dtype=torch.long))


def test_hard_negatives_follow_softmax_of_similarity():
    sim = torch.tensor([[9.0, 0.0, 1.0, 2.0, 3.0]]).repeat(4005, 1)
    groups, col_groups = torch.zeros(4005, dtype=torch.long), torch.arange(5)  # column 0 is every row's positive
    neg = sample_hard_negatives(sim, groups, col_groups, generator=torch.Generator().manual_seed(1))
    neg = neg[5:]  # rows 0..4 also have their own column (j = i) as a positive
    freq = torch.bincount(neg, minlength=5).float() / len(neg)
    want = torch.softmax(torch.tensor([-math.inf, 0.0, 1.0, 2.0, 3.0]), 0)
    assert freq[0] == 0
    torch.testing.assert_close(freq, want, atol=0.03, rtol=0)
    assert freq[4] > freq[3] > freq[2] > freq[1]


def test_itm_head_trains_on_positives_and_hard_negatives():
    torch.manual_seed(15)
    head = LOSSES.build("itm", dim=D, hidden=16)
    assert isinstance(head, ITMHead)
    a, b = unit(B, D), unit(B, D)
    out = head(a, b, groups_a=GROUPS_A, groups_b=GROUPS_B)
    assert torch.isfinite(out.loss) and 0.0 <= out.metrics["accuracy"].item() <= 1.0
    out.loss.backward()
    assert all(p.grad is not None for p in head.parameters())
    # the loss is the CE of 1/3 positive pairs and 2/3 negatives: an MLP saying "match" with logit margin m
    # scores -(log sigmoid(m) + 2 log sigmoid(-m)) / 3
    with torch.no_grad():
        head.mlp[-1].weight.zero_()
        head.mlp[-1].bias.copy_(torch.tensor([0.0, 2.0]))
    loss = head(a.detach(), b.detach()).loss
    torch.testing.assert_close(loss, -(F.logsigmoid(torch.tensor(2.0)) + 2 * F.logsigmoid(torch.tensor(-2.0))) / 3)
    with pytest.raises(ValueError, match="dim=8"):
        head(unit(B, 4), unit(B, 4))


# ------------------------------------------------------------------ registry
def test_registry_builds_every_loss_and_names_the_closest_parameter():
    assert {"clip", "siglip", "multi_positive", "matryoshka", "itm"} <= set(LOSSES.names())
    with pytest.raises(ConfigError, match="label_smoothing"):
        LOSSES.build("clip", label_smothing=0.1)
    with pytest.raises(ConfigError, match="init_temperature") as err:
        LOSSES.build("matryoshka", dims=[4], loss="clip", loss_params={"init_temprature": 0.1})
    assert "matryoshka.loss_params" in str(err.value)
    with pytest.raises(ConfigError, match="siglip"):
        LOSSES.build("sigilp")
