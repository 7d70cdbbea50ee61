"""Interpreting a study folder end to end (:func:`interpret_study`: screen, decode, embed, assemble) and loading an
``echo-clip`` model for it (:func:`load_echo_model`)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import List, Tuple

import numpy as np
import torch

from alignkit.core.video import write_video
from alignkit.domains.medical.echo.data import EchoClipDecoder
from alignkit.domains.medical.echo.interpret.assemble import Interpretation, interpret_embeddings
from alignkit.domains.medical.echo.interpret.card import MISSING_CARD
from alignkit.domains.medical.echo.interpret.index import ReportIndex
from alignkit.domains.medical.echo.interpret.screening import screen_study_folder
from alignkit.domains.medical.echo.loading import ECHO_SUFFIXES, load_echo
from alignkit.domains.medical.echo.models import EchoClipModule

INDEX_DIR = "echo_index"
"""The index folder inside a run (or exported model) folder, as ``alignkit demo echo`` writes it."""
PREVIEW_FRAMES = 32
PREVIEW_SIZE = 160


def study_videos(study_dir: str | Path) -> List[Path]:
    """The video files (:data:`~alignkit.domains.medical.echo.loading.ECHO_SUFFIXES`) of a study folder, sorted."""
    folder = Path(study_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"study folder {folder} does not exist (give a folder of one study's videos)")
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in ECHO_SUFFIXES)
    if not found:
        raise FileNotFoundError(f"{folder} holds no videos ({', '.join(ECHO_SUFFIXES)})")
    return found


def preview_gif(path: Path) -> bytes:
    """An animated GIF of a video or DICOM cine for the report page: up to :data:`PREVIEW_FRAMES` frames evenly
    spread over the file, about :data:`PREVIEW_SIZE` px on its long side, at 10 frames/s."""
    decoded = load_echo(path, select=lambda total, fps: np.unique(np.linspace(0, total - 1, min(total, PREVIEW_FRAMES))
                                                                  .round().astype(int)), mask_sector="none")
    frames = decoded.frames
    long_side = max(frames.shape[1:3])
    step, scale = max(1, long_side // PREVIEW_SIZE), max(1, PREVIEW_SIZE // long_side)
    with tempfile.TemporaryDirectory() as tmp:
        gif = write_video(Path(tmp) / "preview.gif", np.ascontiguousarray(frames[:, ::step, ::step]), fps=10,
                          scale=scale)
        return gif.read_bytes()


@torch.no_grad()
def interpret_study(module: EchoClipModule, index: ReportIndex, study_dir: str | Path, k: int = 5,
                    previews: bool = False) -> Interpretation:
    """Screen ``study_dir`` (:func:`~.screening.screen_study_folder`), decode the accepted files as the index's
    decoder did (centred clips; an undecodable file is excluded), embed them and assemble the report
    (:func:`~.assemble.interpret_embeddings`). ``previews``: also keep an animated GIF of every decoded file
    (``result.previews``, for :func:`~.html.write_report_html`)."""
    decoder = EchoClipDecoder(**{**index.decoder, "clip_start": "centre"})
    excluded: List[Tuple[str, str]] = []
    clips, names, gifs = [], [], {}
    for screened in screen_study_folder(study_dir):
        if not screened.accepted:
            excluded.append((screened.name, screened.reason))
            continue
        try:
            clips.append(decoder.video(screened.path.read_bytes(), str(screened.path)))
            if previews:
                gifs[screened.name] = preview_gif(screened.path)
        except ValueError as exc:
            excluded.append((screened.name, f"cannot be decoded: {exc}"))
            continue
        names.append(screened.name)
    if not clips:
        card = index.card.lines() if index.card is not None else list(MISSING_CARD)
        return Interpretation(card=card, videos=[], views=[], excluded=excluded, abstained=True,
                              reasons=[f"{study_dir} holds no echocardiography video or DICOM that passed the "
                                       "screening, so no report is given."])
    module.eval()
    video, logits, features = module.video_features(torch.stack(clips).to(next(module.parameters()).device))
    result = interpret_embeddings(video.float().cpu(), logits.float().cpu(), index, k, names, excluded,
                                  features.float().cpu())
    result.previews = gifs
    return result


def load_echo_model(path: str | Path) -> EchoClipModule:
    """An ``echo-clip`` model from an exported folder (``config.json``, see ``alignkit export``) or a run folder
    (``config.yaml`` + ``checkpoints/last.ckpt``), in eval mode on the CPU."""
    folder = Path(path)
    if (folder / "config.json").is_file():
        from alignkit.core.api import AlignedModel
        module = AlignedModel.load(folder).module
    elif (folder / "config.yaml").is_file():
        from alignkit.core.runner import CHECKPOINT_DIR, LAST_CHECKPOINT, cfg_from_run, load_checkpoint
        module = load_checkpoint(cfg_from_run(folder), folder / CHECKPOINT_DIR / LAST_CHECKPOINT)
    else:
        raise FileNotFoundError(f"{folder} is neither a run folder (config.yaml) nor an exported model folder "
                                f"(config.json); train one with `alignkit demo echo` or `alignkit train`")
    if not isinstance(module, EchoClipModule):
        raise ValueError(f"{folder} holds a {type(module).__name__}, not an echo-clip model (model.name: echo-clip)")
    return module.eval()

