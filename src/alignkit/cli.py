"""The ``alignkit`` command. It parses arguments, then calls into the core and the domains.

    alignkit train  -c CONFIG [key=value ...] [--resume [latest|CKPT]]
    alignkit eval   -c CONFIG (--ckpt PATH | --model DIR) [key=value ...] [--out DIR]
    alignkit import-weights FORMAT SRC --out DIR [--allow-partial] [option=value ...]
    alignkit demo   NAME [--out DIR] [--fast]
    alignkit configs
    alignkit shard  -c CONFIG --out DIR [--split train] [--max-count N] [--resize S [--resize-mode longest|square]]
                    [--format jpeg|png|webp] [--quality Q] [--bit-depth 8] [--workers N] [key=value ...]
    alignkit export RUN --out DIR [--ckpt PATH]
    alignkit bench  NAME -c CONFIG [key=value ...]     (e.g. bench xray: BenchX-style comparison)
    alignkit validate -c CONFIG [key=value ...] [--out DIR] [--workers N]

A user error (a missing path, a bad config value, a corrupt file) prints one or two lines naming the path or
key and exits with status 2; ``--debug`` (anywhere on the line) shows the traceback instead.

Config overrides are ``key=value`` items anywhere after the subcommand (Hydra's form: dotted keys, list
indices as ``objectives.0.loss``, YAML values), also accepted as ``--set key=value ...`` and LightningCLI's
``--data.batch_size=32``. ``CONFIG`` is a file or the name of a config shipped with the package
(``alignkit configs`` lists them, e.g. ``core/shapes_demo``). Domains add their own subcommands through
``alignkit.core.registry.COMMANDS``; building this parser imports only those small command modules.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights only ever come from local folders
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_KEY = re.compile(r"^[A-Za-z_][\w\-]*(\.[\w\-]+)*$")
DOMAIN_PACKAGES = {"medical": ("pydicom", "av"), "pointcloud": ("open3d", "trimesh"),
                   "robotics": ("gymnasium", "mujoco", "minigrid", "metaworld", "av")}
"""What each domain's extra installs (checked without importing it)."""


def split_overrides(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """``argv`` without its config overrides, and the overrides (``key=value``): bare items, the items after
    ``--set`` and ``--dotted.key=value`` options. Items that are not ``key=value`` stay where they are (so a
    positional after ``--set`` is not swallowed)."""
    rest: List[str] = []
    overrides: List[str] = []
    for token in argv:
        if token == "--set":
            continue
        if token.startswith("--set="):
            overrides.append(token[len("--set="):])
            continue
        key, sep, _ = token.partition("=")
        if sep and not token.startswith("-") and _KEY.match(key):
            overrides.append(token)
        elif sep and token.startswith("--") and "." in key and _KEY.match(key[2:]):
            overrides.append(token[2:])
        else:
            rest.append(token)
    return rest, overrides


def _load(args: argparse.Namespace):
    from alignkit.core.config import load_config, resolve_config_path
    folder = getattr(args, "model", None)
    if folder:  # eval --model: the folder's model replaces the config's (whose tower paths may be unset)
        from alignkit.core.api import folder_model_config
        return load_config(resolve_config_path(args.config), args.overrides, model=folder_model_config(folder))
    return load_config(resolve_config_path(args.config), args.overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from alignkit.core.runner import train
    result = train(_load(args), resume=args.resume)
    if result["trainer"].is_global_zero:
        print(f"run folder: {result['run_dir']}  (metrics.json, config.yaml, checkpoints/, tb/, csv/)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from alignkit.core.runner import evaluate
    result = evaluate(_load(args), args.ckpt, Path(args.out) if args.out else None, model_dir=args.model)
    _print_metrics(result["metrics"])
    print(f"metrics written to {result['run_dir'] / 'metrics.json'}")
    return 0


def parse_options(items: Sequence[str]) -> dict:
    """``key=value`` items as a dict, each value read as YAML (``true``, ``224``, ``[1, 2]``, paths as strings)."""
    import yaml
    options = {}
    for item in items:
        key, _, value = item.partition("=")
        options[key] = yaml.safe_load(value) if value else ""
    return options


def cmd_import_weights(args: argparse.Namespace) -> int:
    from alignkit.core.importing import import_weights, read_import_report
    out = import_weights(args.format, Path(args.src), Path(args.out), allow_partial=args.allow_partial,
                         **parse_options(args.overrides))
    report = read_import_report(out)
    towers = ", ".join(f"{name} ({', '.join(f'{k}={v}' for k, v in pre.items() if not isinstance(v, dict))})"
                       for name, pre in report["preprocessing"].items())
    print(f"imported {args.format} {args.src} into {out}: towers {towers}; joint space {report['embed_dim']}-d")
    for note in report["notes"]:
        print(f"note: {note}")
    if report["left"]:
        print(f"left out ({len(report['left'])} keys, --allow-partial): {', '.join(report['left'][:20])}"
              + (" ..." if len(report["left"]) > 20 else ""))
    print(f"load it with alignkit.load('{out}'); start a config's tower from it with "
          f"encoder: imported, params: {{path: {out}/towers/<modality>}}; evaluate it with "
          f"alignkit eval -c CONFIG --model {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from alignkit.core.registry import DEMOS
    out = Path(args.out) if args.out else Path("runs") / f"demo-{args.name}"
    DEMOS.get(args.name)(out=out, fast=args.fast)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from alignkit.core.config import resolve_config_path
    from alignkit.core.registry import BENCHES
    BENCHES.get(args.name)(resolve_config_path(args.config), args.overrides)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from alignkit.core.config import to_plain
    from alignkit.core.validate import format_report, validate_dataset
    cfg = _load(args)
    data = to_plain(cfg.data)
    splits = [data.get(f"{role}_split", role) for role in ("train", "val", "test")]
    out = Path(args.out) if args.out else Path("runs") / f"validate-{cfg.get('name', 'config')}"
    report = validate_dataset(data["dataset"], data.get("params") or {}, [s for s in splits if s is not None], out,
                              workers=args.workers)
    for line in format_report(report):
        print(line)
    print(f"report written to {out / 'validation.json'}")
    return 0 if report.ok else 1


def missing_extras() -> List[str]:
    """Domains whose packages are not installed (found without importing anything)."""
    out = []
    for domain, packages in DOMAIN_PACKAGES.items():
        missing = [p for p in packages if importlib.util.find_spec(p) is None]
        if missing:
            out.append(f"{domain} (missing {', '.join(missing)}: pip install 'alignkit[{domain}]')")
    return out


def cmd_configs(args: argparse.Namespace) -> int:
    from alignkit.core.config import configs_dir, list_configs
    root = configs_dir()
    for path in list_configs(root):
        print(path.relative_to(root))
    for line in missing_extras():
        print(f"# not installed: {line}", file=sys.stderr)
    return 0


def cmd_shard(args: argparse.Namespace) -> int:
    from alignkit.core.config import to_plain
    from alignkit.core.registry import DATASETS
    from alignkit.core.image_encoding import ImageEncoding
    from alignkit.core.shards import shard_pattern, write_shards
    cfg = _load(args)
    dataset = DATASETS.build(cfg.data.dataset, where="data.params", split=args.split, **to_plain(cfg.data.params))
    recode = args.resize is not None or args.format is not None or args.bit_depth is not None
    encoding = ImageEncoding(size=args.resize, resize=args.resize_mode, interpolation=args.interpolation,
                             format=args.format, quality=args.quality, bit_depth=args.bit_depth) if recode else None
    paths = write_shards(dataset, Path(args.out), max_count=args.max_count, encoding=encoding, workers=args.workers)
    print(f"wrote {len(dataset)} samples in {len(paths)} shards; train from them with "
          f"data.shards='{shard_pattern(paths)}'")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from alignkit.core.api import AlignedModel
    from alignkit.core.config import to_plain
    from alignkit.core.runner import CHECKPOINT_DIR, LAST_CHECKPOINT, cfg_from_run, load_checkpoint
    run = Path(args.run)
    cfg = cfg_from_run(run)
    ckpt = Path(args.ckpt) if args.ckpt else run / CHECKPOINT_DIR / LAST_CHECKPOINT
    model = load_checkpoint(cfg, ckpt)
    out = AlignedModel(model, to_plain(cfg)).save(Path(args.out))
    carried = []
    for folder in sorted(p for p in run.iterdir() if p.is_dir() and (p / "model_card.json").is_file()):
        shutil.copytree(folder, out / folder.name, dirs_exist_ok=True)  # e.g. echo_index/: calibration + card
        carried.append(folder.name)
    print(f"exported {ckpt} to {out} (config.json, model.safetensors"
          + "".join(f", {name}/" for name in carried) + f"); load it with alignkit.load('{out}')")
    return 0


def _print_metrics(metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title="metrics")
    table.add_column("name")
    table.add_column("value", justify="right")
    for k in sorted(metrics):
        v = metrics[k]
        table.add_row(k, f"{float(v):.4f}" if isinstance(v, (int, float)) else str(v))
    Console().print(table)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alignkit", description="Language-aligned representation learning: train, "
                                "evaluate, export and benchmark models from configs, run the demos.",
                                epilog="Overrides: key=value after the subcommand, e.g. "
                                       "alignkit train -c core/shapes_demo data.batch_size=32 trainer.max_steps=100")
    p.add_argument("--debug", action="store_true", help="show the traceback of a user error")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", required=True,
                        help="YAML config: a file, or a shipped config's name (alignkit configs lists them)")
        sp.add_argument("--set", metavar="KEY=VALUE", help="config overrides, also written bare: key=value ...")
        sp.set_defaults(takes_overrides=True)

    sp = sub.add_parser("train", help="train a model from a config")
    with_config(sp)
    sp.add_argument("--resume", nargs="?", const="latest", default=None, metavar="latest|CKPT",
                    help="continue the run: from its last checkpoint (latest, the default) or from CKPT")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("eval", help="evaluate a checkpoint, or an exported or imported model folder, with the "
                        "config's data and evaluators")
    with_config(sp)
    which = sp.add_mutually_exclusive_group(required=True)
    which.add_argument("--ckpt", help="a run's checkpoint (the config's model)")
    which.add_argument("--model", help="a model folder (alignkit export / alignkit import-weights), evaluated "
                       "without training with its recorded preprocessing")
    sp.add_argument("--out", help="folder for metrics.json and plots (default: RUN/eval)")
    sp.set_defaults(func=cmd_eval)

    from alignkit.core.registry import BENCHES, COMMANDS, DEMOS
    sp = sub.add_parser("demo", help="run an embedded demo end to end")
    sp.add_argument("name", help=f"one of: {', '.join(DEMOS.names())}")
    sp.add_argument("--out", help="output folder (default runs/demo-NAME)")
    sp.add_argument("--fast", action="store_true", help="a shorter run for tests (minutes, not tens of minutes)")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("bench", help="train the configured methods and compare them in one table")
    sp.add_argument("name", help=f"one of: {', '.join(BENCHES.names())}")
    with_config(sp)
    sp.set_defaults(func=cmd_bench)

    sp = sub.add_parser("configs", help="list the configs shipped with the package")
    sp.set_defaults(func=cmd_configs)

    sp = sub.add_parser("shard", help="write a config's dataset as WebDataset tar shards")
    with_config(sp)
    sp.add_argument("--out", required=True)
    sp.add_argument("--split", default="train")
    sp.add_argument("--max-count", type=int, default=10000, help="samples per shard")
    sp.add_argument("--resize", type=int, metavar="S", help="store images resized to S pixels (default: the "
                    "original bytes)")
    sp.add_argument("--resize-mode", choices=("longest", "square"), default="longest",
                    help="longest side S keeping the aspect, or S x S")
    sp.add_argument("--interpolation", choices=("lanczos", "bicubic", "bilinear", "box", "hamming", "nearest"),
                    default="lanczos")
    sp.add_argument("--format", choices=("jpeg", "png", "webp"), help="re-encode images (default: the file's "
                    "format); 16-bit images stay 16-bit PNG unless --bit-depth 8")
    sp.add_argument("--quality", type=int, default=90, help="JPEG/WebP quality 1-100")
    sp.add_argument("--bit-depth", type=int, choices=(8,), help="convert 16-bit images to 8 bits")
    sp.add_argument("--workers", type=int, default=1, help="processes reading and encoding items (the shards "
                    "are the same for any number)")
    sp.set_defaults(func=cmd_shard)

    sp = sub.add_parser("export", help="write a run as a model folder (config.json + model.safetensors)")
    sp.add_argument("run", help="run folder (holds config.yaml and checkpoints/)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--ckpt", help="checkpoint (default RUN/checkpoints/last.ckpt)")
    sp.set_defaults(func=cmd_export)

    from alignkit.core.registry import IMPORTERS
    sp = sub.add_parser("import-weights", help="map a released checkpoint (open_clip, Hugging Face, torchvision, "
                        "ULIP, Voltron) onto alignkit towers and write a model folder")
    sp.add_argument("format", help=f"one of: {', '.join(IMPORTERS.names())}")
    sp.add_argument("src", help="the checkpoint file or folder, as its authors publish it")
    sp.add_argument("--out", required=True, help="the model folder to write")
    sp.add_argument("--allow-partial", action="store_true",
                    help="load what fits and list what was left, instead of refusing a checkpoint that does not fit")
    sp.set_defaults(func=cmd_import_weights, takes_overrides=True)

    sp = sub.add_parser("validate", help="read every item of every split through the configured readers and "
                        "report failed, skipped and flat or saturated items (exit 1 on errors)")
    with_config(sp)
    sp.add_argument("--out", help="folder for validation.json and contact sheets (default runs/validate-NAME)")
    sp.add_argument("--workers", type=int, default=None, help="decoding processes (default: up to 4)")
    sp.set_defaults(func=cmd_validate)

    for name in COMMANDS.names():  # the domains' subcommands (interpret, convert, collect, ...)
        COMMANDS.get(name)(sub)
    return p


USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ImportError)
"""What a user's input causes: a bad config value (ConfigError is a ValueError), a missing or unreadable path, a
corrupt file (alignkit's readers raise ValueError naming it), a missing extra. Printed without a traceback."""


def user_error_message(exc: BaseException) -> str:
    """One or two lines for ``exc``: its message; for an error re-raised from a DataLoader worker (whose message
    carries the worker's traceback) the original error's last line."""
    from alignkit.core.registry import ConfigError
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].strip()
    if isinstance(exc, OSError) and getattr(exc, "filename", None) and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    kind = "config error" if isinstance(exc, ConfigError) else "error"
    return f"alignkit: {kind}: {text or type(exc).__name__}"


def main(argv: Optional[List[str]] = None) -> int:
    rest, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in rest  # accepted anywhere on the line
    parser = build_parser()
    args = parser.parse_args([t for t in rest if t != "--debug"])
    args.debug = debug
    if overrides and not getattr(args, "takes_overrides", False):
        parser.error(f"alignkit {args.command} takes no config overrides, got: {' '.join(overrides)}")
    args.overrides = overrides
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        if args.debug:
            raise
        print(user_error_message(exc), file=sys.stderr)
        print("(run `alignkit --debug ...` for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
