"""Language-conditioned simulators behind one interface, chosen by name from :data:`ENVS`.

``metaworld`` (Meta-World v3 on MuJoCo), ``babyai`` (Minigrid/BabyAI levels), ``babyai-chain``
(CALVIN-style chains of BabyAI instructions) and ``ai2thor`` (a local AI2-THOR build). Each simulator's
module is imported when :data:`ENVS` is first asked for it, so importing this package loads no simulator.
"""
from alignkit.domains.robotics.envs.base import (ENVS, EnvSpec, LanguageEnv, Observation, SpecLike, as_env_spec,
                                                  layout_seed)

__all__ = ["ENVS", "EnvSpec", "LanguageEnv", "Observation", "SpecLike", "as_env_spec", "layout_seed"]
