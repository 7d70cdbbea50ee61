"""Model FLOPs of a training step, the machine's measured matmul rate, device peaks and MFU.

- :func:`step_flops`: FLOPs of one call of ``step`` (a forward + backward), counted by
  ``torch.utils.flop_counter.FlopCounterMode``: matmuls (``2 m n k`` for ``(m, k) @ (k, n)``),
  convolutions (``2 * output elements * C_in / groups * kernel volume``) and attention, forward and
  backward (the backward of a matmul is two matmuls: ``4 m n k``); oneDNN's CPU linear op counts as its
  matmul. Elementwise ops, normalisation, pooling, indexing, sorting and the optimiser are free in this count,
  so a utilisation computed from it is a lower bound of the hardware's use.
- :func:`matmul_flops_per_s`: the FLOP/s of a large square matmul measured here and now
  (``2 n^3 / t``, best of ``repeats``): float32 on CPU; bfloat16 or TF32 on CUDA.
- :data:`PEAK_BF16_FLOPS` / :func:`peak_bf16_flops`: a GPU's dense (no sparsity) bfloat16
  tensor-core peak from its datasheet, looked up by ``torch.cuda.get_device_name``.
- :func:`utilisation`: ``(F_step / t_step) / R``; with ``R`` the device's bf16 peak this is the model
  FLOPs utilisation (MFU), with ``R`` the measured matmul rate it is the fraction of what this machine
  reaches on a large matmul.

Lightning's ``get_available_flops`` is not used: it lists the sparse figures for H200 and H100 NVL and
does not recognise the plain name ``NVIDIA H200``.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

PEAK_BF16_FLOPS: Tuple[Tuple[str, str, float], ...] = (
    # (device, pattern searched in the lower-cased torch.cuda.get_device_name, dense bf16 FLOP/s)
    ("H100 NVL", r"h100.*nvl", 835e12),
    ("H100 PCIe", r"h100.*(pcie|hbm2e)", 756e12),
    ("H100 SXM", r"h100", 989.4e12),  # "NVIDIA H100 80GB HBM3"
    ("H200 NVL", r"h200.*nvl", 835e12),
    ("H200 SXM", r"h200", 989.4e12),  # also GH200, whose GPU is an H100/H200 SXM part
    ("B200", r"b200", 2250e12),
    ("A100", r"a100", 312e12),  # SXM4 and PCIe, 40 and 80 GB
    ("A10", r"\ba10\b", 125e12),
    ("L40S", r"l40s", 362e12),
    ("L40", r"l40\b", 181e12),
    ("L4", r"\bl4\b", 121e12),
    ("RTX 4090", r"rtx 4090", 165.2e12),  # FP32 accumulation
)
"""Dense bfloat16 tensor-core peaks (NVIDIA datasheets' figures without structured sparsity, i.e. half
the starred numbers); the first pattern that matches the device name wins. V100 and T4 have no bf16
tensor cores and are absent."""


def peak_bf16_flops(device_name: Optional[str] = None) -> Optional[Tuple[str, float]]:
    """``(device, FLOP/s)`` of the dense bf16 peak of ``device_name`` (default: the current CUDA device),
    or None when the device is not in :data:`PEAK_BF16_FLOPS` (or there is no CUDA device)."""
    if device_name is None:
        if not torch.cuda.is_available():
            return None
        device_name = torch.cuda.get_device_name()
    name = device_name.lower()
    for device, pattern, flops in PEAK_BF16_FLOPS:
        if re.search(pattern, name):
            return device, flops
    return None


def _register_onednn_linear() -> None:
    """Count oneDNN's CPU linear op (``mkldnn._linear_pointwise``, which PyTorch's inductor emits and the point
    towers call for float32 rows) as the matmul it is: ``2 * rows * in_features * out_features``."""
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return

    @register_flop_formula(torch.ops.mkldnn._linear_pointwise)
    def _linear_pointwise_flops(x_shape: Tuple[int, ...], w_shape: Tuple[int, ...], *args: Any, **kwargs: Any) -> int:
        return 2 * math.prod(x_shape[:-1]) * x_shape[-1] * w_shape[0]


_register_onednn_linear()


def step_flops(step: Callable[[], Any]) -> int:
    """Model FLOPs of one call of ``step`` (run once, for real), e.g. ``lambda: loss(model(x)).backward()``:
    the sum over matmuls, convolutions and attention of their forward and backward FLOPs (module docstring)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


@dataclass
class FlopCounting:
    """A FlopCounterMode entered and left by hand (e.g. from two Lightning hooks around one training step):
    ``start()`` ... ``stop()`` returns the FLOPs counted in between."""
    _mode: Optional[FlopCounterMode] = None

    def start(self) -> None:
        if self._mode is not None:
            raise RuntimeError("FlopCounting.start() called twice without stop()")
        self._mode = FlopCounterMode(display=False)
        self._mode.__enter__()

    def stop(self) -> int:
        if self._mode is None:
            raise RuntimeError("FlopCounting.stop() called before start()")
        mode, self._mode = self._mode, None
        mode.__exit__(None, None, None)
        return int(mode.get_total_flops())


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued kernels (a no-op on CPU): call before reading a clock."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops_per_s(size: int = 2048, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                       repeats: int = 5, tf32: bool = False, clock: Callable[[], float] = time.perf_counter) -> float:
    """Best-of-``repeats`` FLOP/s of ``A @ B``, ``A, B`` of ``dtype``, ``size x size`` (``2 size^3`` FLOPs each).

    On CUDA each timing is bracketed by ``torch.cuda.synchronize`` and covers 10 back-to-back matmuls
    (one kernel is too short to time from the host). ``tf32=True`` (float32 on CUDA) lets the tensor cores
    round the inputs to TF32 for this measurement only; the global setting is restored. ``clock``: wall
    time by default; ``time.thread_time`` (this thread's CPU time) measures a one-thread CPU matmul as a
    quiet core would run it, on a machine shared with other processes.
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    per_timing = 10 if device.type == "cuda" else 1
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a @ b
        best = float("inf")
        for _ in range(repeats):
            synchronize(device)
            start = clock()
            for _ in range(per_timing):
                a @ b
            synchronize(device)
            best = min(best, (clock() - start) / per_timing)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2 * size ** 3 / best


def utilisation(flops_per_step: float, step_seconds: float, reference_flops_per_s: float) -> float:
    """``(flops_per_step / step_seconds) / reference_flops_per_s``: MFU when the reference is the device's bf16
    peak (:func:`peak_bf16_flops`), the fraction of the measured matmul rate when it is
    :func:`matmul_flops_per_s`."""
    if step_seconds <= 0 or reference_flops_per_s <= 0:
        raise ValueError(f"step_seconds and reference_flops_per_s must be > 0, got {step_seconds}, "
                         f"{reference_flops_per_s}")
    return flops_per_step / step_seconds / reference_flops_per_s
