"""Medical domain: report handling shared by chest X-ray and echo, and the X-ray package (issue 3)."""
from alignkit.domains.medical.xray import bench, data, gloria, models  # noqa: F401  (registers cxr, gloria, ...)
