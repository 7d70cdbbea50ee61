"""Loading one echo video: :func:`load_echo`, :func:`probe_echo` and the MONAI reader and transforms.

:func:`load_echo` reads an AVI/MP4 (PyAV, :mod:`alignkit.core.video`) or a DICOM cine (pydicom,
:mod:`~alignkit.domains.medical.echo.dicom`) into an :class:`EchoVideo`: uint8 RGB frames ``(T, H, W, 3)``,
the frame rate and, for ultrasound DICOM, the *sector mask* (the scan cone,
:func:`~alignkit.domains.medical.echo.sector.sector_mask`; everything outside it, i.e. text, ECG traces,
calipers, logos, is set to 0). Only the frames a ``select`` callable asks for are decoded: a video seeks to
the keyframe before the first one, a DICOM decodes just those frames. :class:`EchoVideoReader` is the same
loader as a MONAI ``ImageReader``, and :class:`LoadEcho` / :class:`LoadEchod` are the MONAI array/dict
transforms that start a pipeline (then :mod:`alignkit.domains.medical.echo.transforms`)::

    Compose([LoadEchod("video"), SampleClipd("video", num_frames=16, stride=2),
             FrameTransformsd("video", image_size=64)])
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.image_reader import ImageReader
from monai.transforms import MapTransform, Transform
from monai.utils import ImageMetaKey, MetaKeys, ensure_tuple

from alignkit.core.params import check_choice
from alignkit.core.video import (FrameSelector, VideoProbe, VideoSource, probe_video, read_frames,
                                 source_name)
from alignkit.domains.medical.dicom import ULTRASOUND_MODALITIES, check_modalities, is_dicom
from alignkit.domains.medical.echo.dicom import probe_dicom, read_dicom
from alignkit.domains.medical.echo.sector import sector_mask

PathLike = Union[str, Path]

VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".webm")
DICOM_SUFFIXES = (".dcm", ".dicom")
ECHO_SUFFIXES = (*VIDEO_SUFFIXES, *DICOM_SUFFIXES)
"""File types :func:`load_echo` reads (a file without one of these is read as DICOM if it has the DICM mark)."""

SECTOR_MASKING = ("dicom", "all", "none")
"""``mask_sector`` choices: mask DICOM files only (default; EchoNet AVIs are already masked), every file, none."""


@dataclass(frozen=True, eq=False)
class EchoVideo:
    """Decoded frames of one echo video.

    ``frames``: uint8 ``(T, H, W, 3)`` RGB (grey videos have three equal channels); ``indices``: int64 ``(T,)``,
    the file frame each row came from; ``total_frames``: frames in the file; ``fps``: frames per second
    (``nan`` when the file does not say); ``sector``: bool ``(H, W)``, True inside the scan cone (pixels outside
    are 0 in ``frames``), or None when not masked; ``source``: the file (or name of the bytes) read.
    """

    frames: np.ndarray
    indices: np.ndarray
    total_frames: int
    fps: float
    sector: Optional[np.ndarray]
    source: str


def is_dicom_source(source: VideoSource) -> bool:
    """True for DICOM bytes (``DICM`` at byte 128, DICOM PS3.10 7.1) or a DICOM path (see
    :func:`~alignkit.domains.medical.dicom.is_dicom`); False for the :data:`VIDEO_SUFFIXES`."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[128:132]) == b"DICM"
    return Path(source).suffix.lower() not in VIDEO_SUFFIXES and is_dicom(source)


def _check_file(source: VideoSource) -> None:
    if not isinstance(source, (bytes, bytearray)) and not Path(source).is_file():
        raise FileNotFoundError(f"echo video file {source} not found")


def load_echo(source: VideoSource, select: Optional[FrameSelector] = None, mask_sector: str = "dicom",
              name: str = "", dicom: Optional[bool] = None,
              modalities: Optional[Sequence[str]] = ULTRASOUND_MODALITIES) -> EchoVideo:
    """Read an echo video (a path, or a file's bytes, e.g. from a shard) into an :class:`EchoVideo`.

    - AVI/MP4/MOV/MKV/WebM (PyAV, :func:`~alignkit.core.video.read_frames`): frames as RGB24; ``fps`` the
      stream's average rate; the frame count from the container header (counted from the packets when absent).
      With ``select``, decoding seeks to the keyframe before the first wanted frame and stops after the last
      (an intra-only codec such as FFV1 decodes just that range).
    - DICOM (pydicom, :func:`~alignkit.domains.medical.echo.dicom.read_dicom`; a ``.dcm``/``.dicom`` name or
      the ``DICM`` mark): multi-frame cines and single frames, through the display pipeline shared with the
      X-ray readers (:func:`~alignkit.domains.medical.dicom.render_frames`: modality LUT, the file's VOI or
      else the actual range of the decoded frames, MONOCHROME1 inverted, PALETTE COLOR and YBR to RGB, grey
      repeated over three channels); every transfer syntax the ``medical`` extra's plugins decode. ``fps``
      from ``FrameTime`` (see :func:`~alignkit.domains.medical.echo.dicom._dicom_fps`). Only the wanted frames
      are decoded. ``modalities``: the accepted Modality values (default US and IVUS; None: any); a CT, MR,
      ... file is refused naming its modality
      (:func:`~alignkit.domains.medical.dicom.check_modality`, which also says how files without a Modality
      tag are judged).

    ``select(total, fps)`` returns the frame indices to decode, in output order (e.g.
    :meth:`~alignkit.domains.medical.echo.transforms.SampleClip.indices`); None decodes every frame.
    ``mask_sector`` (:data:`SECTOR_MASKING`): ``"dicom"`` masks DICOM files, ``"all"`` every file, ``"none"``
    nothing; masked frames are 0 outside :func:`~alignkit.domains.medical.echo.sector.sector_mask` (estimated
    from the decoded frames, within the DICOM's ultrasound region when it has a valid one). ``dicom`` forces
    the file type (None decides by name and mark); ``name`` is what errors call the source.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for an unreadable,
    corrupt or truncated one, a DICOM of another modality, without pixel data or with a malformed header, an
    unsupported photometric interpretation, or indices outside the file's frames.
    """
    check_choice(mask_sector, SECTOR_MASKING, "mask_sector")
    modalities = check_modalities(modalities)
    where = source_name(source, name)
    _check_file(source)
    as_dicom = is_dicom_source(source) if dicom is None else dicom
    region: Optional[np.ndarray] = None
    if as_dicom:
        decoded, region = read_dicom(source, select, where, modalities)
    else:
        decoded = read_frames(source, select, where)
    frames = decoded.frames
    sector = None
    if mask_sector == "all" or (mask_sector == "dicom" and as_dicom):
        sector = sector_mask(frames, region)
        frames = frames * sector[None, :, :, None]
    return EchoVideo(frames=np.ascontiguousarray(frames), indices=decoded.indices, total_frames=decoded.total,
                     fps=decoded.fps, sector=sector, source=where)


def probe_echo(source: VideoSource, name: str = "",
               modalities: Optional[Sequence[str]] = ULTRASOUND_MODALITIES) -> VideoProbe:
    """Frame count, size and rate of a video or DICOM from its header, without decoding pixel data (``fps`` is
    ``nan`` when the file does not say); a DICOM of a modality outside ``modalities`` is refused as by
    :func:`load_echo`."""
    where = source_name(source, name)
    _check_file(source)
    if is_dicom_source(source):
        return probe_dicom(source, where, check_modalities(modalities))
    return probe_video(source, where)


# ------------------------------------------------------------------------------------ MONAI reader/loaders


class EchoVideoReader(ImageReader):
    """A MONAI ``ImageReader`` that reads echo videos with :func:`load_echo` (same ``mask_sector``, ``modalities``).

    One file at a time. ``get_data`` gives the uint8 array ``(T, H, W, 3)`` with metadata ``spatial_shape``
    ``(T, H, W)``, ``original_channel_dim`` -1, ``fps``, ``total_frames`` and ``sector`` (the mask or None).
    """

    def __init__(self, mask_sector: str = "dicom", modalities: Optional[Sequence[str]] = ULTRASOUND_MODALITIES):
        super().__init__()
        check_choice(mask_sector, SECTOR_MASKING, "mask_sector")
        self.mask_sector = mask_sector
        self.modalities = check_modalities(modalities)

    def verify_suffix(self, filename: Union[Sequence[PathLike], PathLike]) -> bool:
        return all(Path(f).suffix.lower() in ECHO_SUFFIXES for f in ensure_tuple(filename))

    def read(self, data: Union[Sequence[PathLike], PathLike], **kwargs: Any) -> EchoVideo:
        """Decode one file (``kwargs`` are accepted for MONAI's interface and unused)."""
        files = ensure_tuple(data)
        if len(files) != 1:
            raise ValueError(f"EchoVideoReader reads one video at a time, got {len(files)} files; videos differ "
                             "in length, so load them separately")
        return load_echo(files[0], mask_sector=self.mask_sector, modalities=self.modalities)

    def get_data(self, img: EchoVideo) -> Tuple[np.ndarray, Dict[str, Any]]:
        meta: Dict[str, Any] = {MetaKeys.SPATIAL_SHAPE: np.asarray(img.frames.shape[:3]),
                                MetaKeys.ORIGINAL_CHANNEL_DIM: -1, "fps": img.fps, "total_frames": img.total_frames,
                                "sector": img.sector}
        return img.frames, meta


class LoadEcho(Transform):
    """MONAI array transform: file path -> ``MetaTensor`` float32 ``(3, T, H, W)`` of values 0..255 (channel
    first), every frame, with the reader's metadata (``fps``, ``total_frames``, ``sector``, ``filename_or_obj``).

    Errors are not swallowed: a corrupt file raises the ``ValueError`` naming it.
    """

    def __init__(self, mask_sector: str = "dicom", modalities: Optional[Sequence[str]] = ULTRASOUND_MODALITIES):
        self.reader = EchoVideoReader(mask_sector=mask_sector, modalities=modalities)

    def __call__(self, filename: PathLike) -> MetaTensor:
        array, meta = self.reader.get_data(self.reader.read(filename))
        meta[ImageMetaKey.FILENAME_OR_OBJ] = str(filename)
        video = torch.from_numpy(np.ascontiguousarray(array.transpose(3, 0, 1, 2))).float()
        return MetaTensor(video, meta=meta)


class LoadEchod(MapTransform):
    """Dictionary version of :class:`LoadEcho`: replaces each ``keys`` path by its video ``MetaTensor``."""

    def __init__(self, keys: Union[str, Sequence[str]], mask_sector: str = "dicom", allow_missing_keys: bool = False,
                 modalities: Optional[Sequence[str]] = ULTRASOUND_MODALITIES):
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadEcho(mask_sector=mask_sector, modalities=modalities)

    def __call__(self, data: Mapping[str, Any]) -> Dict[str, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d
