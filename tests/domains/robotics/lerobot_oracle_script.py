"""Run in a subprocess by test_lerobot_oracle.py: read a dataset with the REAL lerobot (v0.4.x, codebase v3.0)
installed with ``pip install --no-deps --target <oracle>``, and save what its LeRobotDataset returns.

    python lerobot_oracle_script.py <oracle folder> <dataset root> <out.npz>

torchvision cannot be installed beside this torch: a stand-in module is put in ``sys.modules`` here only (its
``io.VideoReader`` decodes with PyAV as torchvision's "pyav" backend does); ``accelerate`` likewise when absent.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
import types


def _module(name, **attrs):
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__path__ = []
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


class _Identity:
    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, x, *args, **kwargs):
        return x


class _VideoReader:
    """torchvision.io.VideoReader(path, "video") with the pyav backend: seek to the keyframe before a time,
    then yield {"data": uint8 (3, H, W), "pts": seconds} frame after frame."""

    def __init__(self, path, stream="video"):
        import av

        self.container = av.open(str(path))
        self._stream = self.container.streams.video[0]
        self._frames = None

    def seek(self, seconds, keyframes_only=True):
        self.container.seek(int(seconds / self._stream.time_base), stream=self._stream, backward=True,
                            any_frame=not keyframes_only)
        return self

    def __iter__(self):
        import torch

        for frame in self.container.decode(self._stream):
            yield {"data": torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1),
                   "pts": float(frame.pts * self._stream.time_base)}


def install_stand_ins() -> None:
    names = ["Compose", "ToTensor", "Resize", "ColorJitter", "RandomResizedCrop", "Normalize", "RandomAffine"]
    v2_functional = _module("torchvision.transforms.v2.functional")
    v2 = _module("torchvision.transforms.v2", Transform=_Identity, functional=v2_functional,
                 **{n: _Identity for n in names})
    transforms = _module("torchvision.transforms", v2=v2, **{n: _Identity for n in names})
    io = _module("torchvision.io", VideoReader=_VideoReader)
    _module("torchvision", transforms=transforms, io=io, set_video_backend=lambda backend: None)
    if importlib.util.find_spec("accelerate") is None:
        _module("accelerate", Accelerator=_Identity)


def main(oracle: str, root: str, out: str) -> None:
    sys.path.insert(0, oracle)
    install_stand_ins()
    import numpy as np
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("alignkit/oracle", root=root, video_backend="pyav")
    arrays = {"num_frames": np.array(ds.num_frames), "num_episodes": np.array(ds.num_episodes)}
    items = [ds[i] for i in range(len(ds))]
    for key in ds.meta.camera_keys:
        arrays[f"camera/{key}"] = np.stack([item[key].numpy() for item in items])
    for key in ("observation.state", "action", "episode_index", "frame_index", "index", "task_index", "timestamp"):
        if key in items[0]:
            arrays[key] = np.stack([np.asarray(item[key].numpy()) for item in items])
    for feature, stats in ds.meta.stats.items():
        for name, value in stats.items():
            arrays[f"stats/{feature}/{name}"] = np.asarray(value)
    np.savez(out, **arrays)
    with open(out + ".json", "w") as f:
        json.dump({"tasks": [item["task"] for item in items], "camera_keys": list(ds.meta.camera_keys),
                   "features": {k: v["dtype"] for k, v in ds.features.items()}}, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
