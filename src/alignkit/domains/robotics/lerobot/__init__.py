"""The LeRobot dataset format with pyarrow and PyAV: write codebase v3.0, read v3.0 and v2.1.

The ``lerobot`` package cannot be installed beside this torch, so the format is implemented here from its
documented fields (sources: huggingface/lerobot ``src/lerobot/datasets/``, named in each module):

- :mod:`.layout`: codebase version, file paths, default features, task tables, file rollover;
- :mod:`.columns`: the arrow types of the data columns (lerobot's ``get_hf_features_from_features``) and
  their conversion to and from numpy, PNG images stored in parquet included;
- :mod:`.stats`: per-feature statistics (with q01..q99 quantiles) per episode and aggregated over a dataset;
- :mod:`.writer`: :class:`LeRobotWriter` (episodes -> parquet + mp4 + ``meta/``);
- :mod:`.reader`: :class:`LeRobotDataset` (history windows, frames seeked without decoding whole videos);
- :mod:`.splits`: :func:`split_episodes` and the ``DATASETS`` entry ``"lerobot"`` (:class:`LeRobotSplit`).

Video encoding and decoding are :mod:`alignkit.core.video`'s.
"""
from alignkit.domains.robotics.lerobot.layout import CODEBASE_VERSION, DEFAULT_FEATURES
from alignkit.domains.robotics.lerobot.reader import LeRobotDataset
from alignkit.domains.robotics.lerobot.splits import LeRobotSplit, split_episodes
from alignkit.domains.robotics.lerobot.stats import aggregate_stats, feature_stats
from alignkit.domains.robotics.lerobot.writer import LeRobotWriter

__all__ = ["CODEBASE_VERSION", "DEFAULT_FEATURES", "LeRobotDataset", "LeRobotSplit", "LeRobotWriter", "aggregate_stats",
           "feature_stats", "split_episodes"]
