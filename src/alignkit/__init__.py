"""alignkit: language-aligned representation learning on one contrastive core."""
from alignkit.version import __version__


def load(path, map_location="cpu"):
    """Load an exported model folder (see ``alignkit export``) as an :class:`alignkit.core.api.AlignedModel`."""
    from alignkit.core.api import AlignedModel
    return AlignedModel.load(path, map_location=map_location)


__all__ = ["load", "__version__"]
