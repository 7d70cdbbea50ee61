"""The fused ends of PointNet++ levels against the modules they replace: values, gradients, running statistics."""
import copy

import pytest
import torch
from torch import nn

from alignkit.core.registry import ENCODERS
from alignkit.domains.pointcloud import ops_native
from alignkit.domains.pointcloud.models import linear_norm, rows_linear
from alignkit.domains.pointcloud.models.grouped_norm import batch_norm_relu_max
from alignkit.domains.pointcloud.models.linear_norm import (gathered_linear_batch_norm_relu, linear_batch_norm_relu,
                                                            linear_batch_norm_relu_max, narrow_batch_norm_relu,
                                                            narrow_stem)
from alignkit.domains.pointcloud.ops import group
from alignkit.domains.pointcloud.models.rows_linear import dense, linear_rows

BACKENDS = ["torch"] + (["native"] if ops_native.available() else [])
needs_native = pytest.mark.skipif(not ops_native.available(), reason="no C compiler: the torch path is what runs")


def make_norm(channels, dtype, momentum=0.1, affine=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    norm = nn.BatchNorm1d(channels, momentum=momentum, affine=affine).to(dtype)
    with torch.no_grad():
        if affine:
            norm.weight.copy_(torch.randn(channels, generator=gen))      # negative scales included
            norm.bias.copy_(torch.randn(channels, generator=gen))
        norm.running_mean.copy_(torch.randn(channels, generator=gen))
        norm.running_var.copy_(torch.rand(channels, generator=gen) + 0.5)
    return norm


def run(fn, z, norm, grad):
    z = z.detach().clone().requires_grad_()
    out = fn(z, norm)
    out.backward(grad)
    grads = [z.grad] + [p.grad for p in norm.parameters()]
    return out.detach(), grads, (norm.running_mean.clone(), norm.running_var.clone(),
                                 norm.num_batches_tracked.clone())


def assert_same(got, want, tol):
    (out, grads, stats), (out_ref, grads_ref, stats_ref) = got, want
    torch.testing.assert_close(out, out_ref, atol=tol, rtol=tol)
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g, r, atol=tol, rtol=tol)
    for s, r in zip(stats, stats_ref):
        torch.testing.assert_close(s, r, atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("momentum,affine", [(0.1, True), (None, True), (0.1, False)])
def test_batch_norm_relu_max_equals_the_modules(backend, training, dtype, tol, momentum, affine):
    G, k, C = 40, 8, 7
    gen = torch.Generator().manual_seed(1)
    z = (torch.randn(G * k, C, generator=gen) * 3 + 2).to(dtype)
    grad = torch.randn(G, C, generator=gen).to(dtype)
    norm = make_norm(C, dtype, momentum, affine).train(training)
    reference = copy.deepcopy(norm)
    for _ in range(2):                                       # twice: the running statistics compound
        got = run(lambda x, n: batch_norm_relu_max(x, n, k, backend=backend), z, norm, grad)
        want = run(lambda x, n: torch.relu(n(x)).view(G, k, C).max(dim=1).values, z, reference, grad)
        assert_same(got, want, tol)
        for p in list(norm.parameters()) + list(reference.parameters()):
            p.grad = None
    if affine:
        assert (norm.weight < 0).any(), "the test must cover negative scales (the min is picked there)"


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm_relu_max_duplicate_rows_send_the_gradient_to_their_point(backend):
    """Ball query pads a group with copies of its first neighbour: equal rows. The gradient reaching the
    points through the gather is the module path's."""
    gen = torch.Generator().manual_seed(2)
    points = torch.randn(30, 5, generator=gen, dtype=torch.float64)
    idx = torch.randint(0, 30, (12, 6), generator=gen)
    idx[:, 3:] = idx[:, :1]                                  # three padded copies per group
    grad = torch.randn(12, 5, generator=gen, dtype=torch.float64)
    results = []
    for fused in (True, False):
        p = points.clone().requires_grad_()
        norm = make_norm(5, torch.float64).train()
        rows = p[idx.reshape(-1)]
        out = (batch_norm_relu_max(rows, norm, 6, backend=backend) if fused
               else torch.relu(norm(rows)).view(12, 6, 5).amax(dim=1))
        out.backward(grad)
        results.append((out.detach(), p.grad, norm.weight.grad, norm.bias.grad))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm_relu_max_propagates_nan(backend):
    norm = make_norm(3, torch.float32).eval()
    z = torch.randn(8, 3)
    z[5, 1] = float("nan")
    out = batch_norm_relu_max(z, norm, 4, backend=backend)
    assert torch.isnan(out[1, 1]) and not torch.isnan(out[0]).any() and not torch.isnan(out[1, [0, 2]]).any()


def test_batch_norm_relu_max_rejects_bad_shapes_and_backends():
    norm = make_norm(3, torch.float32)
    with pytest.raises(ValueError, match=r"\(G \* k, C\) with k = 4"):
        batch_norm_relu_max(torch.randn(10, 3), norm, 4)
    with pytest.raises(ValueError, match="unknown backend"):
        batch_norm_relu_max(torch.randn(8, 3), norm, 4, backend="cuda")


@needs_native
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_linear_batch_norm_relu_max_equals_the_modules(training, bias, dtype, tol):
    """The backward built from x A, the Gram matrix and the selected rows equals autograd through the modules:
    input, weight, bias and norm gradients, and the running statistics."""
    G, k, K, C = 48, 8, 6, 11
    gen = torch.Generator().manual_seed(6)
    x = (torch.randn(G * k, K, generator=gen) + 0.5).to(dtype)
    grad = torch.randn(G, C, generator=gen).to(dtype)
    linear = nn.Linear(K, C, bias=bias).to(dtype)
    norm = make_norm(C, dtype).train(training)
    reference_linear, reference_norm = copy.deepcopy(linear), copy.deepcopy(norm)
    results = []
    for lin, bn, fn in ((linear, norm, lambda a: linear_batch_norm_relu_max(a, linear, norm, k)),
                        (reference_linear, reference_norm,
                         lambda a: torch.relu(reference_norm(reference_linear(a))).view(G, k, C).amax(dim=1))):
        a = x.clone().requires_grad_()
        out = fn(a)
        out.backward(grad)
        results.append([out.detach(), a.grad, *(p.grad for p in lin.parameters()), *(p.grad for p in bn.parameters()),
                        bn.running_mean, bn.running_var])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)


@needs_native
@pytest.mark.parametrize("bias", [True, False])
def test_linear_batch_norm_relu_max_in_blocks_and_with_nan(bias, monkeypatch):
    """The linear output is computed a few groups at a time (blocks of BLOCK_BYTES, the last one partial): same
    values as the modules; a NaN row takes PyTorch's max and propagates as the module path does."""
    monkeypatch.setattr(linear_norm, "BLOCK_BYTES", 3 * 8 * 5 * 4)       # 3 groups of 8 rows x 5 channels
    torch.manual_seed(0)
    G, k, K, C = 10, 8, 4, 5
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(G * k, K, generator=gen)
    linear, norm = nn.Linear(K, C, bias=bias), make_norm(C, torch.float32).eval()
    with torch.no_grad():
        want = torch.relu(norm(linear(x))).view(G, k, C).amax(dim=1)
        torch.testing.assert_close(linear_batch_norm_relu_max(x, linear, norm, k), want, atol=1e-5, rtol=1e-5)
        x[13, 2] = float("nan")                                          # group 1
        got = linear_batch_norm_relu_max(x, linear, norm, k)
    assert torch.isnan(got[1]).all() and not torch.isnan(got[[0, *range(2, G)]]).any()


@needs_native
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("op,width", [(narrow_batch_norm_relu, 3), (narrow_batch_norm_relu, 6),
                                      (linear_batch_norm_relu, 9), (linear_batch_norm_relu, 40)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_linear_batch_norm_relu_equals_the_modules(op, width, training, bias, input_grad, dtype, tol, monkeypatch):
    """One Linear - BatchNorm - ReLU layer as one op, against the modules through autograd in float64 (the float32
    module path is itself up to ~3e-4 from it: the reference is float64 for both dtypes): output, input gradient
    (when x needs one), parameter gradients, running statistics and num_batches_tracked, twice (they compound).
    The narrow op (xyz offsets) never forms the linear output; the middle-layer op forms dz in blocks (here of
    100 rows: six blocks, the last partial) and recomputes the ReLU mask from z."""
    monkeypatch.setattr(linear_norm, "BLOCK_BYTES", 100 * 40 * torch.empty((), dtype=dtype).element_size())
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(550, width, generator=gen, dtype=torch.float64) * 0.7 + 0.3
    grad = torch.randn(550, 12, generator=gen, dtype=torch.float64)
    linear = nn.Linear(width, 12, bias=bias).to(dtype)
    norm = make_norm(12, dtype).train(training)
    reference_linear, reference_norm = copy.deepcopy(linear).double(), copy.deepcopy(norm).double()
    results = []
    for lin, bn, fn, kind in ((linear, norm, lambda a: op(a, linear, norm), dtype),
                              (reference_linear, reference_norm,
                               lambda a: torch.relu(reference_norm(reference_linear(a))), torch.float64)):
        a = x.to(kind).requires_grad_(input_grad)
        for _ in range(2):
            lin.zero_grad(), bn.zero_grad()
            if a.grad is not None:
                a.grad = None
            out = fn(a)
            out.backward(grad.to(kind))
        results.append([out.detach(), *(p.grad for p in lin.parameters()), *(p.grad for p in bn.parameters()),
                        bn.running_mean, bn.running_var, bn.num_batches_tracked, a.grad])
    for got, want in zip(*results):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got.double(), want.double(), atol=tol, rtol=tol)


@needs_native
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_gathered_linear_batch_norm_relu_equals_the_modules(training, bias, dtype, tol):
    """A level's first layer over [xyz offsets, the previous level's features grouped by idx], the feature part run
    on the points before grouping: output, the features' and offsets' gradients (index_add of the grouped rows'),
    parameter gradients and running statistics equal the modules' on the explicitly grouped rows (float64
    reference). idx repeats points across and within groups, as ball query's padding does."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(11)
    B, N, M, k, F = 3, 20, 6, 5, 7
    rel = torch.randn(B, M, k, 3, generator=gen, dtype=torch.float64)
    feats = torch.randn(B, N, F, generator=gen, dtype=torch.float64)
    idx = torch.randint(0, N, (B, M, k), generator=gen)
    idx[:, :, 3:] = idx[:, :, :1]
    grad = torch.randn(B * M * k, 9, generator=gen, dtype=torch.float64)
    linear, norm = nn.Linear(3 + F, 9, bias=bias).to(dtype), make_norm(9, dtype).train(training)
    reference_linear, reference_norm = copy.deepcopy(linear).double(), copy.deepcopy(norm).double()
    def modules(r, f):
        rows = torch.cat([r, group(f, idx)], dim=-1).reshape(-1, 3 + F)
        return torch.relu(reference_norm(reference_linear(rows)))

    results = []
    for lin, bn, kind, fn in (
            (linear, norm, dtype, lambda r, f: gathered_linear_batch_norm_relu(r, f, idx, linear, norm)),
            (reference_linear, reference_norm, torch.float64, modules)):
        r, f = rel.to(kind).requires_grad_(), feats.to(kind).requires_grad_()
        out = fn(r, f)
        out.backward(grad.to(kind))
        results.append([out.detach(), r.grad, f.grad, *(p.grad for p in lin.parameters()),
                        *(p.grad for p in bn.parameters()), bn.running_mean, bn.running_var])
    for got, want in zip(*results):
        torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)


@needs_native
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_narrow_stem_equals_the_modules(training, bias, dtype, tol, monkeypatch):
    """A first level's two first layers as one op (the first layer's output only ever in blocks, here of 50 rows:
    eleven, the last partial): output, every parameter gradient and both norms' running statistics equal the
    modules' through autograd (float64 reference), twice (the running statistics compound)."""
    monkeypatch.setattr(linear_norm, "BLOCK_BYTES", 50 * 12 * torch.empty((), dtype=dtype).element_size())
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(530, 3, generator=gen, dtype=torch.float64) * 0.5 + 0.1
    grad = torch.randn(530, 12, generator=gen, dtype=torch.float64)
    layers = [nn.Linear(3, 10, bias=bias).to(dtype), make_norm(10, dtype, seed=1).train(training),
              nn.Linear(10, 12, bias=bias).to(dtype), make_norm(12, dtype, seed=2).train(training)]
    reference = [copy.deepcopy(m).double() for m in layers]
    results = []
    for modules, kind, fn in ((layers, dtype, lambda a: narrow_stem(a, *layers)),
                              (reference, torch.float64, lambda a: torch.relu(reference[3](reference[2](
                                  torch.relu(reference[1](reference[0](a)))))))):
        for _ in range(2):
            for m in modules:
                m.zero_grad()
            out = fn(x.to(kind))
            out.backward(grad.to(kind))
        results.append([out.detach(), *(p.grad for m in modules for p in m.parameters()),
                        *(t for m in (modules[1], modules[3]) for t in (m.running_mean, m.running_var))])
    for got, want in zip(*results):
        torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)


def test_narrow_batch_norm_relu_rejects_wide_inputs():
    with pytest.raises(ValueError, match="K <= 8"):
        narrow_batch_norm_relu(torch.randn(10, 9), nn.Linear(9, 4), nn.BatchNorm1d(4))


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("width", [3, 40])
def test_linear_rows_float32_equals_linear(width, onednn, monkeypatch):
    """float32 rows go through oneDNN's linear where this torch has it (both ways: forward and input gradient)."""
    if not onednn:
        monkeypatch.setattr(rows_linear, "onednn_linear", lambda: False)
    elif not rows_linear.onednn_linear():
        pytest.skip("this torch has no oneDNN linear op")
    else:
        monkeypatch.setattr(rows_linear, "ONEDNN_ROWS", 1)       # 700 rows: oneDNN here too
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(9)
    linear = nn.Linear(width, 24)
    x, grad = torch.randn(700, width, generator=gen), torch.randn(700, 24, generator=gen)
    torch.testing.assert_close(dense(x, linear.weight.detach(), linear.bias.detach()),
                               nn.functional.linear(x, linear.weight, linear.bias).detach(), atol=1e-5, rtol=1e-5)
    results = []
    for fn in (linear_rows, lambda a, m: m(a)):
        a = x.clone().requires_grad_()
        linear.zero_grad()
        out = fn(a, linear)
        out.backward(grad)
        results.append((out.detach(), a.grad, linear.weight.grad.clone(), linear.bias.grad.clone()))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("width", [3, 6, 40])
def test_linear_rows_equals_linear(width):
    gen = torch.Generator().manual_seed(4)
    linear = nn.Linear(width, 16).double()
    x = torch.randn(500, width, generator=gen, dtype=torch.float64)
    grad = torch.randn(500, 16, generator=gen, dtype=torch.float64)
    results = []
    for fn in (linear_rows, lambda a, m: m(a)):
        a = x.clone().requires_grad_()
        linear.zero_grad()
        fn(a, linear).backward(grad)
        results.append((a.grad, linear.weight.grad.clone(), linear.bias.grad.clone()))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("params", [{}, {"mlp_bias": True, "scale_by_radius": False, "in_features": 2}])
def test_pointnet2_fused_equals_modules_over_training_steps(params, compiled, monkeypatch):
    """Three SGD steps of the fused tower and of fused=False from one initialisation: same embeddings,
    parameters and running statistics (the fused path is an implementation, not a different model). SGD, not
    Adam: a bias before a batch norm has a zero gradient up to rounding, which Adam would scale up to lr.
    Without the compiled loops (a GPU, no C compiler) the fused path is the PyTorch one."""
    if not compiled:
        monkeypatch.setattr(ops_native, "supports", lambda *tensors: False)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 256, 3 + params.get("in_features", 0), generator=gen, dtype=torch.float64)
    x[..., :3] /= x[..., :3].norm(dim=-1, keepdim=True)
    torch.manual_seed(0)
    fused = ENCODERS.build("pointnet2-ssg", **params).double().train()
    plain = ENCODERS.build("pointnet2-ssg", fused=False, **params).double()
    plain.load_state_dict(fused.state_dict())
    plain.train()
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (fused, plain)]
    for _ in range(3):
        outs = []
        for model, opt in zip((fused, plain), opts):
            opt.zero_grad()
            out = model(x)
            out.pow(2).mean().backward()
            opt.step()
            outs.append(out.detach())
        torch.testing.assert_close(outs[0], outs[1], atol=1e-9, rtol=1e-9)
    for (name, a), b in zip(fused.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9, msg=name)
    fused.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(x), atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(fused.forward_dense(x), plain.forward_dense(x), atol=1e-9, rtol=1e-9)


def test_pointnet2_fused_float32_step_matches_float64_modules():
    """float32, where oneDNN's linear and the float-blocked sums run: one training step's embeddings, gradients and
    running statistics against the module path in float64 (the truth up to 1e-15). The fused float32 step is
    within 5e-5 of it, and nearer than the module path in float32 (whose batch norms lose more to rounding)."""
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(8, 512, 3, generator=gen)
    x /= x.norm(dim=-1, keepdim=True)
    torch.manual_seed(0)
    fused = ENCODERS.build("pointnet2-ssg").train()
    plain, truth = ENCODERS.build("pointnet2-ssg", fused=False), ENCODERS.build("pointnet2-ssg", fused=False).double()
    plain.load_state_dict(fused.state_dict()), truth.load_state_dict(fused.state_dict())
    models = (fused, plain.train(), truth.train())
    outs = []
    for model in models:
        out = model(x.to(next(model.parameters()).dtype))
        out.pow(2).mean().backward()
        outs.append(out.detach().double())
    errors = {"fused": [], "plain": []}
    for name, model, out in zip(errors, models, outs):
        errors[name].append(((out - outs[2]).abs().max() / outs[2].abs().max()).item())
        for p, t in zip(model.parameters(), truth.parameters()):
            if t.grad is not None:
                errors[name].append(((p.grad.double() - t.grad).abs().max() / t.grad.abs().max()).item())
        for a, t in zip(model.state_dict().values(), truth.state_dict().values()):
            errors[name].append(((a.double() - t.double()).abs().max() / t.double().abs().max()).item())
    assert max(errors["fused"]) < 5e-5, errors["fused"]
    assert max(errors["fused"]) <= max(errors["plain"]), (errors["fused"], errors["plain"])


def test_pointnet2_replaced_norms_run_as_modules():
    """SyncBatchNorm (what Lightning's sync_batchnorm puts in) is not bypassed by the fused path."""
    torch.manual_seed(0)
    model = ENCODERS.build("pointnet2-ssg").eval()
    reference = ENCODERS.build("pointnet2-ssg", fused=False).eval()
    reference.load_state_dict(model.state_dict())
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    x = torch.randn(2, 200, 3)
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in synced.levels.modules()
             if isinstance(m, nn.SyncBatchNorm)]
    with torch.no_grad():
        torch.testing.assert_close(synced(x), reference(x), atol=1e-5, rtol=1e-5)
    assert len(calls) == len(hooks) == 8                      # every level's norm ran as its module
