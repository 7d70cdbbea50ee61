"""Robotics domain (issue 6): LeRobot-format episodes, RLDS conversion, language-conditioned simulators
(Meta-World, BabyAI, AI2-THOR), demonstration collection, vectorised rollouts, Voltron and GR-1 / BC policies."""
import os

os.environ.setdefault("MUJOCO_GL", "osmesa")  # CPU rendering; must be set before mujoco is first imported

from alignkit.domains.robotics import (cli, collect, dataset, demo, envs, policy,  # noqa: E402,F401  (registrations)
                                      rollout)
from alignkit.domains.robotics.models import bc, gr1, voltron  # noqa: E402,F401
