"""The shared contrastive alignment core: losses, towers, the Lightning module, data, evaluation."""


def register_core() -> None:
    """Import the core modules so their losses, encoders, heads, datasets and evaluators are registered."""
    from alignkit.core import augment, data, demo, encoders, evaluate, losses, module  # noqa: F401
