"""Voltron (Karamcheti et al., RSS 2023): language-driven representation learning for robotics.

- :mod:`.pretraining`: alignkit's Voltron (V-Cond / V-Dual / V-Gen pretraining on LeRobot windows, ``MODELS``
  ``"voltron"``), its encoder (``ENCODERS`` ``"voltron"``) and the loader of frozen encoders
  (``ENCODERS`` ``"voltron-pretrained"``: an alignkit export or an imported released checkpoint).
- :mod:`.released`: the encoders of Voltron's released models (V-Cond, V-Dual, V-Gen, R-MVP) in their exact
  architecture and parameter names (``ENCODERS`` ``"voltron-released"``), built by
  ``alignkit import-weights voltron`` (:mod:`alignkit.domains.robotics.importing`).
- :mod:`.layers`: the transformer pieces of the released models (RMSNorm, SwishGLU, LayerScale, Voltron's block).
"""
from alignkit.domains.robotics.models.voltron.pretraining import (EXPORT_FORMAT, NUM_FRAMES, VARIANTS, VoltronEncoder,
                                                                  VoltronModule, VoltronOutput, load_voltron_encoder,
                                                                  next_token_loss, prefix_lm_mask)
from alignkit.domains.robotics.models.voltron.released import (RELEASED_VARIANTS, VoltronReleasedEncoder,
                                                               released_encoder_names)

__all__ = ["EXPORT_FORMAT", "NUM_FRAMES", "VARIANTS", "RELEASED_VARIANTS", "VoltronEncoder", "VoltronModule",
           "VoltronOutput", "VoltronReleasedEncoder", "load_voltron_encoder", "next_token_loss", "prefix_lm_mask",
           "released_encoder_names"]
