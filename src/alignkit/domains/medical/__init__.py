"""Medical domain: report handling shared by chest X-ray and echo, and the X-ray package (issue 3)."""
from alignkit.domains.medical.xray import data, gloria, models  # noqa: F401  (registers cxr, gloria, gloria_local)
