"""Medical domain: report handling shared by chest X-ray and echo, the X-ray package and the echo package."""
from alignkit.domains.medical.echo import cli as echo_cli  # noqa: F401  (registrations: echo datasets, towers,
from alignkit.domains.medical.echo import data as echo_data  # noqa: F401  echo-clip, echo_study, the echo demo
from alignkit.domains.medical.echo import demo as echo_demo  # noqa: F401  and `alignkit interpret`)
from alignkit.domains.medical.echo import encoders as echo_encoders  # noqa: F401
from alignkit.domains.medical.echo import evaluate as echo_evaluate  # noqa: F401
from alignkit.domains.medical.echo import models as echo_models  # noqa: F401
from alignkit.domains.medical.xray import bench, data, demo, gloria, models  # noqa: F401  (registers cxr, gloria, ...)
