"""RLDS episodes decode strictly: a language instruction that is not UTF-8 and a truncated camera JPEG are
EpisodeErrors naming the episode and step (skipped and listed by ``convert_rlds(..., skip_bad=True)``), on the
real BridgeData record."""
from __future__ import annotations

from pathlib import Path

import pytest

from alignkit.domains.robotics.episode import EpisodeError
from alignkit.domains.robotics.rlds import episode_from_example, parse_example, read_tfrecord

REPO = Path(__file__).resolve().parents[3]
TFRECORD = (REPO.parent / "shared" / "data" / "robotics" / "bridge_debug" / "bridge_dataset" / "1.0.0"
            / "bridge_dataset-train.tfrecord-00000-of-00001")

pytestmark = pytest.mark.skipif(not TFRECORD.is_file(), reason=f"sample data missing: {TFRECORD}")


@pytest.fixture(scope="module")
def example() -> dict:
    return parse_example(next(iter(read_tfrecord(TFRECORD))))


def test_the_real_episode_decodes(example: dict) -> None:
    episode = episode_from_example(example, ("image_0",), "record 0")
    assert episode.task in {"put carrot on plate", "put cup from counter or drying rack into sink",
                            "turn lever vertical to front", "flip pot upright which is in sink"}


def test_an_instruction_that_is_not_utf8_names_the_step(example: dict) -> None:
    bad = dict(example)
    steps = list(example["steps/language_instruction"])
    bad["steps/language_instruction"] = [steps[0], "put carrot on pl\xe2te".encode("latin-1"), *steps[2:]]
    with pytest.raises(EpisodeError, match=r"record 0 step 1 language_instruction is not UTF-8 text: byte 16"):
        episode_from_example(bad, ("image_0",), "record 0")


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_a_truncated_camera_jpeg_names_the_step(example: dict, fraction: float) -> None:
    bad = dict(example)
    jpegs = list(example["steps/observation/image_0"])
    bad["steps/observation/image_0"] = [*jpegs[:3], jpegs[3][:int(len(jpegs[3]) * fraction)], *jpegs[4:]]
    with pytest.raises(EpisodeError, match=r"record 0 camera image_0 step 3: cannot decode its JPEG"):
        episode_from_example(bad, ("image_0",), "record 0")
