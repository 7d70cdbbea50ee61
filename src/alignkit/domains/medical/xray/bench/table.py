"""The BenchX comparison table: ``method -> metric -> (mean, std)``, per-class values and timings, written as
markdown and JSON."""
from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union


class BenchTable:
    """Rows of ``method -> metric -> (mean, std)``; ``std`` is None for a single measurement."""

    def __init__(self) -> None:
        self.rows: Dict[str, Dict[str, Tuple[float, Optional[float]]]] = {}
        self.per_class: Dict[str, Dict[str, Dict[str, float]]] = {}  # metric -> method -> class -> value
        self.seconds: Dict[str, Dict[str, float]] = {}  # method -> task -> wall-clock seconds

    @contextlib.contextmanager
    def timed(self, method: str, task: str) -> Iterator[None]:
        """Record the wall-clock seconds of the ``with`` block as ``seconds[method][task]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds.setdefault(method, {})[task] = time.perf_counter() - start

    def add_per_class(self, method: str, metric: str, values: Mapping[str, float]) -> None:
        """Per-class values of ``metric`` (e.g. AUROC per finding) for ``method``; ``"mean"`` is left out."""
        self.per_class.setdefault(metric, {})[method] = {c: float(v) for c, v in values.items() if c != "mean"}

    def add(self, method: str, metric: str, mean: float, std: Optional[float] = None) -> None:
        self.rows.setdefault(method, {})[metric] = (float(mean), None if std is None else float(std))

    def add_metrics(self, method: str, metrics: Mapping[str, Union[float, Tuple[float, float]]],
                    prefix: str = "") -> None:
        """Add every ``name -> value`` or ``name -> (mean, std)`` of ``metrics`` as ``{prefix}{name}``."""
        for name, value in metrics.items():
            mean, std = value if isinstance(value, tuple) else (value, None)
            self.add(method, f"{prefix}{name}", mean, std)

    @property
    def metrics(self) -> List[str]:
        """Every metric name in first-seen order (the table's columns)."""
        return list(dict.fromkeys(m for row in self.rows.values() for m in row))

    @staticmethod
    def _cell(value: Optional[Tuple[float, Optional[float]]]) -> str:
        if value is None:
            return "-"
        mean, std = value
        return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"

    def to_markdown(self) -> str:
        """One row per method, one column per metric; cells ``mean ± std`` (3 decimals), ``-`` if absent; then
        one table per metric with per-class values (:meth:`add_per_class`)."""
        cols = self.metrics
        lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for method, row in self.rows.items():
            lines.append(f"| {method} | " + " | ".join(self._cell(row.get(c)) for c in cols) + " |")
        for metric, by_method in self.per_class.items():
            classes = list(dict.fromkeys(c for values in by_method.values() for c in values))
            lines += ["", f"{metric} per class:", "", "| method | " + " | ".join(classes) + " |",
                      "|---|" + "---|" * len(classes)]
            for method, values in by_method.items():
                lines.append(f"| {method} | " + " | ".join(self._cell((values[c], None)) if c in values else "-"
                                                         for c in classes) + " |")
        return "\n".join(lines) + "\n"

    def to_json(self) -> Dict[str, Any]:
        """``{method: {metric: {"mean": m, "std": s or None}, "<metric>/per_class": {class: value}}}``; NaN -> None."""
        def clean(x: Optional[float]) -> Optional[float]:
            return None if x is None or math.isnan(x) else x
        out: Dict[str, Any] = {method: {m: {"mean": clean(mean), "std": clean(std)} for m, (mean, std) in row.items()}
                               for method, row in self.rows.items()}
        for metric, by_method in self.per_class.items():
            for method, values in by_method.items():
                out.setdefault(method, {})[f"{metric}/per_class"] = {c: clean(v) for c, v in values.items()}
        return out

    def write(self, out_dir: Union[str, Path], stem: str = "benchx") -> Tuple[Path, Path]:
        """Write ``{stem}.md`` and ``{stem}.json`` into ``out_dir``; returns both paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        md, js = out / f"{stem}.md", out / f"{stem}.json"
        md.write_text(self.to_markdown())
        js.write_text(json.dumps(self.to_json(), indent=2))
        return md, js
