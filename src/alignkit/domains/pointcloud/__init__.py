"""Point-cloud domain (issue 5): point ops, readers, rendering, PointNet++ / Point-BERT towers, ULIP, Text4Point."""
from alignkit.domains.pointcloud import data, models, rgbd, segmentation, text4point  # noqa: F401  (registrations)
