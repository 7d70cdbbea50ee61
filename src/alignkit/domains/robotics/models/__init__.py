"""Robotics models: Voltron representations (``voltron``), the GR-1 policy (``gr1``), the language-conditioned
behaviour-cloning baseline (``bc``), the policies' shared pieces (``action_head``, ``policy_module``, ``inputs``,
``patches``) and their attention blocks (``perceiver``).

Importing ``voltron``, ``gr1`` and ``bc`` registers ``MODELS`` ``"voltron"``, ``"gr1"``, ``"lcbc"`` and
``ENCODERS`` ``"voltron"``, ``"voltron-pretrained"`` and ``"voltron-released"`` (Voltron's released checkpoints, imported
with ``alignkit import-weights voltron``); the registries import them when a config names them.
"""
