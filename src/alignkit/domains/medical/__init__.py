"""Medical domain: report handling shared by chest X-ray and echo, and the X-ray package (issue 3)."""
from alignkit.domains.medical.echo import data as echo_data  # noqa: F401  (registers echonet, echo-studies)
from alignkit.domains.medical.xray import bench, data, demo, gloria, models  # noqa: F401  (registers cxr, gloria, ...)
