"""The robotics subcommands of ``alignkit``: converting RLDS episodes and collecting scripted demonstrations.

    alignkit convert rlds SRC DST [--cameras image_0 image_1 image_2] [--fps 5] [--split train]
                                  [--codec libx264] [--skip-bad]
    alignkit collect ENV DST [-n 30] [--seed 0] [--keep-failures] [--codec libx264] [--set key=value ...]

``convert rlds`` reads an RLDS/TFDS folder or ``.tfrecord`` file without TensorFlow, or its ``.npz`` twin
(:func:`~alignkit.domains.robotics.rlds.convert_rlds`), and writes a LeRobot v3.0 dataset at ``DST``.
``collect`` rolls the scripted expert of the registered env ``ENV`` (``metaworld``, ``babyai``,
``babyai-chain``, ``ai2thor``) for ``-n`` demonstrations per task, keeping only successful ones unless
``--keep-failures`` (:func:`~alignkit.domains.robotics.collect.write_demonstrations`); ``--set`` gives the
env's constructor keywords as YAML values, e.g. ``--set tasks=[reach-v3,push-v3] cameras=[corner]``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, Sequence

import yaml

from alignkit.core.registry import COMMANDS, ConfigError


def env_params(items: Sequence[str]) -> Dict[str, Any]:
    """``["tasks=[reach-v3, push-v3]", "image_size=64"]`` -> ``{"tasks": [...], "image_size": 64}`` (YAML values)."""
    params: Dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set '{item}' is not of the form key=value (e.g. tasks=[reach-v3,push-v3])")
        try:
            params[key] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set '{item}': the value is not valid YAML ({exc})") from None
    return params


def run_convert_rlds(args: argparse.Namespace) -> int:
    from alignkit.domains.robotics.rlds import convert_rlds
    report = convert_rlds(args.src, args.dst, fps=args.fps, cameras=args.cameras, split=args.split, codec=args.codec,
                          skip_bad=args.skip_bad, progress=True)
    print(f"wrote {report.episodes} episodes, {report.frames} frames, {len(report.tasks)} tasks to {report.root}")
    for where, reason in report.skipped:
        print(f"skipped {where}: {reason}")
    return 0


def run_collect(args: argparse.Namespace) -> int:
    from alignkit.domains.robotics.collect import write_demonstrations
    # `alignkit` hands the key=value items (after --set or bare) to a command as args.overrides
    spec = {"name": args.env, **env_params([*args.set, *getattr(args, "overrides", [])])}
    report = write_demonstrations(spec, args.dst, n=args.n, seed=args.seed, success_only=not args.keep_failures,
                                  progress=not args.quiet, codec=args.codec)
    print(report.summary())
    return 0


@COMMANDS.register("convert")
def add_convert_parser(sub: argparse._SubParsersAction) -> None:
    from alignkit.core.video import VIDEO_CODECS
    from alignkit.domains.robotics.rlds import BRIDGE_CAMERAS, BRIDGE_FPS
    sp = sub.add_parser("convert", help="convert episodes from another format to the LeRobot v3.0 layout")
    formats = sp.add_subparsers(dest="format", required=True)
    rlds = formats.add_parser("rlds", help="RLDS TFRecords (no TensorFlow needed) or their .npz twin -> LeRobot")
    rlds.add_argument("src", type=Path, help="a TFDS folder, a .tfrecord file or an .npz (bridge_debug_train.npz)")
    rlds.add_argument("dst", type=Path, help="the new LeRobot dataset folder (must be new or empty)")
    rlds.add_argument("--cameras", nargs="+", default=list(BRIDGE_CAMERAS),
                      help=f"steps/observation/<camera> images to keep (default {' '.join(BRIDGE_CAMERAS)})")
    rlds.add_argument("--fps", type=int, default=BRIDGE_FPS, help=f"control rate (default {BRIDGE_FPS}, Bridge's)")
    rlds.add_argument("--split", default="train", help="TFDS split whose *-<split>.tfrecord* files are read")
    rlds.add_argument("--codec", default="libx264", choices=sorted(VIDEO_CODECS),
                      help="video codec (libx264rgb/ffv1: lossless)")
    rlds.add_argument("--skip-bad", action="store_true", help="skip and list bad episodes instead of failing")
    rlds.set_defaults(func=run_convert_rlds)


@COMMANDS.register("collect")
def add_collect_parser(sub: argparse._SubParsersAction) -> None:
    from alignkit.core.registry import indexed_names
    from alignkit.core.video import VIDEO_CODECS
    sp = sub.add_parser("collect", help="roll a simulator's scripted expert and write a LeRobot v3.0 dataset")
    sp.add_argument("env", help=f"registered env: {', '.join(indexed_names('environment'))}")
    sp.add_argument("dst", type=Path, help="the new LeRobot dataset folder (must be new or empty)")
    sp.add_argument("-n", type=int, default=30, help="demonstrations per task (default 30)")
    sp.add_argument("--seed", type=int, default=0, help="base seed: attempt k is laid out from the train seed "
                                                        "of seed + k")
    sp.add_argument("--keep-failures", action="store_true", help="also keep episodes the expert failed")
    sp.add_argument("--codec", default="libx264", choices=sorted(VIDEO_CODECS), help="video codec")
    sp.add_argument("--set", nargs="*", metavar="KEY=VALUE", default=[],
                    help="env constructor keywords, e.g. tasks=[reach-v3,push-v3] or levels=BabyAI-PickupLoc-v0")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=run_collect, takes_overrides=True)
