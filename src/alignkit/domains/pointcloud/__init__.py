"""Point-cloud domain (issue 5): point ops, readers, rendering, PointNet++ / Point-BERT towers, ULIP, Text4Point."""
from alignkit.domains.pointcloud import (data, demo, evaluate, models, rgbd, segmentation,  # noqa: F401
                                         text4point, ulip)  # (registrations)
