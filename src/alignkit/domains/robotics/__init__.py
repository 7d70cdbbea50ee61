"""Robotics domain: LeRobot-format episodes, RLDS conversion, language-conditioned simulators (Meta-World,
BabyAI, AI2-THOR), demonstration collection, vectorised rollouts, Voltron and GR-1 / BC policies.

Nothing is imported here (no simulator is loaded by ``import alignkit.domains.robotics``): the registries
import each module when a config names what it registers.
"""
