"""Point-cloud towers, registered in ``ENCODERS``: ``"pointnet2-ssg"`` and ``"pointbert"``."""
from alignkit.domains.pointcloud.models.pointbert import PointBERT
from alignkit.domains.pointcloud.models.pointnet2 import PointEncoder, PointFeatures, PointNet2SSG

__all__ = ["PointBERT", "PointEncoder", "PointFeatures", "PointNet2SSG"]
