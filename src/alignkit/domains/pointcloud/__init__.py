"""Point-cloud domain (issue 5): point ops, readers, rendering, PointNet++ / Point-BERT towers, ULIP, Text4Point."""
from alignkit.domains.pointcloud import models  # noqa: F401  (registers pointnet2-ssg, pointbert)
