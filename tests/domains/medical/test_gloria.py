"""GLoRIA local alignment: loss and gradients against an explicit-loop reference, masking, sub-word
merging, attention maps and their PNG overlays."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from alignkit.core.registry import LOSSES, ConfigError
from alignkit.domains.medical.xray.gloria import (GloriaLocalLoss, attention_maps, gloria_local_loss, local_similarity,
                                                  merge_subwords, overlay_attention, pairwise_local_similarity,
                                                  plot_word_attention, word_region_attention)


# --------------------------------------------------------------------------- reference
def _cos(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x @ y) / (x.norm() * y.norm())


def reference_local(words, mask, regions, temp1, temp2, temp3):
    """(Z as nested lists, loss), one (report, image, word, region) at a time, straight from the paper."""
    batch, length, num_regions = words.shape[0], words.shape[1], regions.shape[1]
    z = [[None] * batch for _ in range(batch)]
    for t in range(batch):
        for i in range(batch):
            terms = []
            for l in range(length):
                if not mask[t, l]:
                    continue
                w = words[t, l]
                weights = [torch.exp(temp1 * _cos(w, regions[i, r])) for r in range(num_regions)]
                total = sum(weights)
                context = sum(weights[r] / total * regions[i, r] for r in range(num_regions))
                terms.append(torch.exp(temp2 * _cos(context, w)))
            z[t][i] = torch.log(sum(terms)) / temp2
    report_to_image = sum(-temp3 * z[t][t] + torch.log(sum(torch.exp(temp3 * z[t][i]) for i in range(batch)))
                          for t in range(batch)) / batch
    image_to_report = sum(-temp3 * z[i][i] + torch.log(sum(torch.exp(temp3 * z[t][i]) for t in range(batch)))
                          for i in range(batch)) / batch
    return z, (report_to_image + image_to_report) / 2


def _inputs(batch=3, length=5, num_regions=6, dim=8, lengths=(5, 3, 1), seed=0):
    g = torch.Generator().manual_seed(seed)
    words = torch.randn(batch, length, dim, generator=g, dtype=torch.float64, requires_grad=True)
    regions = torch.randn(batch, num_regions, dim, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    return words, mask, regions


# --------------------------------------------------------------------------- loss
@pytest.mark.parametrize("temps", [(4.0, 5.0, 10.0), (1.5, 2.0, 3.0)])
def test_local_loss_matches_loop_reference_values_and_gradients(temps):
    words, mask, regions = _inputs()
    z_ref, loss_ref = reference_local(words, mask, regions, *temps)
    grads_ref = torch.autograd.grad(loss_ref, (words, regions))

    sim = pairwise_local_similarity(words, mask, regions, temps[0], temps[1])
    torch.testing.assert_close(sim, torch.stack([torch.stack(row) for row in z_ref]), rtol=0, atol=1e-5)
    loss = gloria_local_loss(words, mask, regions, *temps)
    torch.testing.assert_close(loss, loss_ref, rtol=0, atol=1e-5)
    for got, want in zip(torch.autograd.grad(loss, (words, regions)), grads_ref):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)

    module = LOSSES.build("gloria_local", temp1=temps[0], temp2=temps[1], temp3=temps[2])
    torch.testing.assert_close(module(words, mask, regions).loss, loss_ref, rtol=0, atol=1e-5)


def test_module_defaults_are_the_papers_and_float32_matches():
    words, mask, regions = _inputs(seed=1)
    out = GloriaLocalLoss()(words.float(), mask, regions.float())
    _, loss_ref = reference_local(words, mask, regions, 4.0, 5.0, 10.0)
    assert abs(out.loss.item() - loss_ref.item()) < 1e-4
    assert 0.0 <= out.metrics["local_accuracy"].item() <= 1.0


def test_padded_words_do_not_change_loss_or_gradients():
    words, mask, regions = _inputs(length=4, lengths=(4, 2, 3))
    loss = gloria_local_loss(words, mask, regions)
    grad_words, grad_regions = torch.autograd.grad(loss, (words, regions))

    garbage = torch.randn(3, 3, words.shape[2], dtype=torch.float64) * 50
    for pad in (garbage, torch.zeros_like(garbage)):  # random junk and the zero rows merge_subwords writes
        padded = torch.cat([words.detach(), pad], 1).requires_grad_(True)
        padded_mask = torch.cat([mask, torch.zeros(3, 3, dtype=torch.bool)], 1)
        padded_loss = gloria_local_loss(padded, padded_mask, regions)
        torch.testing.assert_close(padded_loss, loss, rtol=0, atol=1e-12)
        g_words, g_regions = torch.autograd.grad(padded_loss, (padded, regions))
        torch.testing.assert_close(g_words[:, :4], grad_words, rtol=0, atol=1e-12)
        assert torch.all(g_words[:, 4:] == 0) and torch.all(g_words[~padded_mask] == 0)
        torch.testing.assert_close(g_regions, grad_regions, rtol=0, atol=1e-12)


def test_aligned_pairs_score_lower_loss_than_shuffled_pairs():
    """Each report names two findings; its image holds exactly those finding patterns in two cells."""
    torch.manual_seed(0)
    dim, batch, cells = 32, 6, 16
    concepts = torch.linalg.qr(torch.randn(dim, dim))[0][:, :2 * batch].T  # orthonormal finding patterns
    words = torch.zeros(batch, 3, dim)
    mask = torch.tensor([[True, True, False]] * batch)
    regions = 0.3 * torch.randn(batch, cells, dim)
    for b in range(batch):
        found = [2 * b, 2 * b + 1]
        words[b, :2] = concepts[found] + 0.05 * torch.randn(2, dim)
        regions[b, torch.randperm(cells)[:2]] += 2 * concepts[found]
    aligned = GloriaLocalLoss()(words, mask, regions)
    shuffled = GloriaLocalLoss()(words, mask, regions[torch.roll(torch.arange(batch), 1)])
    assert aligned.loss < shuffled.loss - 1.0
    assert aligned.metrics["local_accuracy"] == 1.0
    assert shuffled.metrics["local_accuracy"] == 0.0


def test_config_errors_and_empty_reports():
    with pytest.raises(ConfigError, match="temp2 must be > 0"):
        GloriaLocalLoss(temp2=0.0)  # the constructor's own check (direct Python use)
    with pytest.raises(ConfigError, match="temp2 = 0.0 for loss 'gloria_local': must be > 0"):
        LOSSES.build("gloria_local", temp2=0.0)  # the registry checks the annotation first
    with pytest.raises(ConfigError, match="unknown parameter 'temp4'"):
        LOSSES.build("gloria_local", temp4=1.0)
    words, mask, regions = _inputs()
    mask[1] = False
    with pytest.raises(ValueError, match="report 1 of the batch has no valid word"):
        gloria_local_loss(words, mask, regions)
    with pytest.raises(ValueError, match="needs as many reports as images"):
        gloria_local_loss(words, torch.ones(3, 5, dtype=torch.bool), regions[:2])
    with pytest.raises(ValueError, match="project both to one dimension"):
        word_region_attention(words, mask, regions[..., :4])


# --------------------------------------------------------------------------- attention
def test_attention_rows_sum_to_one_and_contexts_weight_regions():
    words, mask, regions = _inputs(lengths=(5, 2, 4))
    context, attention = word_region_attention(words, mask, regions, temp1=4.0)
    assert attention.shape == (3, 5, 6) and context.shape == (3, 5, 8)
    torch.testing.assert_close(attention.sum(-1), mask.double())
    torch.testing.assert_close(context, attention @ regions)

    # every (report, image) pair by broadcasting: the diagonal is the paired call
    pair_context, pair_attention = word_region_attention(words[:, None], mask[:, None], regions[None])
    assert pair_attention.shape == (3, 3, 5, 6)
    for b in range(3):
        torch.testing.assert_close(pair_attention[b, b], attention[b])
        torch.testing.assert_close(pair_context[b, b], context[b])


def test_attention_follows_cosine_with_temperature():
    words = torch.tensor([[[1.0, 0.0]]])
    regions = torch.tensor([[[3.0, 0.0], [0.0, 0.5], [-2.0, 0.0]]])  # cosines 1, 0, -1; norms must not matter
    _, attention = word_region_attention(words, torch.ones(1, 1, dtype=torch.bool), regions, temp1=2.0)
    expected = torch.tensor([math.exp(2.0), 1.0, math.exp(-2.0)])
    torch.testing.assert_close(attention[0, 0], expected / expected.sum())


def test_local_similarity_is_the_papers_aggregation():
    words = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    contexts = torch.tensor([[[[2.0, 0.0], [1.0, 1.0], [0.0, 0.0]]]])  # cosines 1 and 1/sqrt(2); word 3 padded
    mask = torch.tensor([[True, True, False]])
    expected = math.log(math.exp(5.0) + math.exp(5.0 / math.sqrt(2))) / 5.0
    assert local_similarity(words, mask, contexts, temp2=5.0).item() == pytest.approx(expected, abs=1e-6)


def test_attention_maps_reshape_row_major_and_upsample():
    attention = torch.arange(2 * 3 * 6, dtype=torch.float32).reshape(2, 3, 6)
    maps = attention_maps(attention, (2, 3))
    assert maps.shape == (2, 3, 2, 3)
    assert maps[1, 2, 1, 0] == attention[1, 2, 3] and maps[0, 1, 0, 2] == attention[0, 1, 2]
    big = attention_maps(attention, (2, 3), size=(8, 12))
    assert big.shape == (2, 3, 8, 12)
    assert big[0, 0, 0, 0] == pytest.approx(attention[0, 0, 0].item())  # corner keeps its cell's value
    with pytest.raises(ValueError, match="do not form the grid 4x2"):
        attention_maps(attention, (4, 2))


# --------------------------------------------------------------------------- merging word pieces
def test_merge_subwords_hand_case():
    tokens = [["[CLS]", "small", "pleural", "eff", "##usion", "[SEP]", "[PAD]"],
              ["[CLS]", "pneu", "##mo", "##thorax", "[SEP]", "[PAD]", "[PAD]"],
              ["[CLS]", "##ab", "x", "[SEP]", "##cd", "[PAD]", "[PAD]"]]
    mask = torch.tensor([[0, 1, 1, 1, 1, 0, 0],
                         [0, 1, 1, 1, 0, 0, 0],
                         [0, 1, 1, 0, 1, 0, 0]], dtype=torch.bool)
    features = torch.arange(3 * 7 * 2, dtype=torch.float32).reshape(3, 7, 2).requires_grad_(True)
    merged, word_mask, words = merge_subwords(features, tokens, mask)

    assert words == [["small", "pleural", "effusion"], ["pneumothorax"], ["ab", "x", "cd"]]
    assert merged.shape == (3, 3, 2)
    assert word_mask.tolist() == [[True, True, True], [True, False, False], [True, True, True]]
    f = features.detach()
    torch.testing.assert_close(merged[0], torch.stack([f[0, 1], f[0, 2], (f[0, 3] + f[0, 4]) / 2]))
    torch.testing.assert_close(merged[1, 0], f[1, 1:4].mean(0))
    assert torch.all(merged[1, 1:] == 0)
    torch.testing.assert_close(merged[2], f[2, [1, 2, 4]])  # a "##" piece after a dropped token starts a word
    (grad,) = torch.autograd.grad(merged[0, 2].sum(), features)
    assert grad[0, 3].tolist() == [0.5, 0.5] and grad[0, 4].tolist() == [0.5, 0.5] and grad.sum() == 2.0


def test_merge_subwords_rejects_mismatched_tokens():
    with pytest.raises(ValueError, match="sample 0 has 2 tokens but features have 3"):
        merge_subwords(torch.zeros(1, 3, 2), [["a", "b"]], torch.ones(1, 3, dtype=torch.bool))


# --------------------------------------------------------------------------- PNG export
def test_overlay_and_word_attention_pngs(tmp_path: Path):
    image = torch.full((64, 64), 0.5)
    attn = torch.zeros(4, 4)
    attn[0, 0] = 1.0  # all attention on the top-left cell
    path = overlay_attention(image, attn, tmp_path / "sub" / "overlay.png")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(path)[..., :3]
    warmth = pixels[..., 0] - pixels[..., 2]  # jet: hot = red, cold = blue; the white margin is neutral
    h, w = warmth.shape
    assert warmth[: h // 2, : w // 2].mean() > warmth[h // 2:, w // 2:].mean() + 0.05
    assert overlay_attention(image, attn, tmp_path / "titled.png", title="effusion").exists()

    words = ["there", "is", "a", "small", "left", "pleural", "effusion"]
    maps = attention_maps(torch.rand(7, 16).softmax(-1), (4, 4))
    grid = plot_word_attention(image[None], words, maps, tmp_path / "words.png", max_words=3)
    assert grid.exists()
    wide = imread(grid)
    assert wide.shape[1] > 3 * wide.shape[0]  # the image and three word panels in a row
    with pytest.raises(ValueError, match="expected a grey image"):
        overlay_attention(np.zeros((3, 8, 8)), attn, tmp_path / "bad.png")
