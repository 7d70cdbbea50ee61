"""The model card an exported echo model carries (``model_card.json`` in its report index folder): what it was trained
on and when, its held-out figures and calibration, and its intended use. Every report begins with it, and a model
trained on synthetic data says so in the report's first line (:meth:`ModelCard.first_line`)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from alignkit.core.checkpoints import read_json

CARD_FILE = "model_card.json"
RESEARCH_USE = "research on echo video-report models; not for clinical use"


@dataclass
class ModelCard:
    """``trained_on``: the training data in words; ``synthetic``: True for generated data; ``trained_at``: ISO date;
    ``held_out_metrics``: figures on held-out studies (name -> value); ``calibration``: how the abstention
    thresholds were set, in words."""

    name: str
    trained_on: str
    synthetic: bool
    trained_at: str
    held_out_metrics: Dict[str, float] = field(default_factory=dict)
    intended_use: str = RESEARCH_USE
    calibration: str = ""

    def first_line(self) -> str:
        if self.synthetic:
            return (f"SYNTHETIC-TRAINED MODEL: {self.name} was trained on synthetic data ({self.trained_on}); its "
                    "reports describe cartoons, not patients. Not for clinical use.")
        return (f"MODEL: {self.name}, trained on {self.trained_on} ({self.trained_at}); intended use: "
                f"{self.intended_use}.")

    def lines(self) -> List[str]:
        """The card as text lines (the first is :meth:`first_line`)."""
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in self.held_out_metrics.items()) or "none recorded"
        return [self.first_line(), f"MODEL CARD: {self.name}; trained on {self.trained_on}, {self.trained_at}",
                f"  held-out metrics: {metrics}", f"  intended use: {self.intended_use}",
                f"  calibration: {self.calibration or 'none'}"]

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CARD_FILE
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> Optional["ModelCard"]:
        """The card in ``folder``, or None when it has none."""
        path = Path(folder) / CARD_FILE
        return cls(**read_json(path)) if path.is_file() else None


MISSING_CARD = ["NO MODEL CARD: nothing records what this model was trained on, so nothing below can be trusted "
                "(the demo writes one; see alignkit.domains.medical.echo.interpret.ModelCard)."]
