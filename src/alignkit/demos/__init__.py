"""Applications on top of the library: the core demo (``alignkit demo core``) and its procedural shapes data.

The domain demos live with their domains (``alignkit.domains.<domain>.demo``); all are chosen by name from
``alignkit.core.registry.DEMOS``.
"""
