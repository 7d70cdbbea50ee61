"""The ``alignkit`` command. It parses arguments, then calls into the core and the domains.

    alignkit train  -c CONFIG [--set key=value ...] [--resume]
    alignkit eval   -c CONFIG --ckpt PATH [--set key=value ...] [--out DIR]
    alignkit demo   NAME [--out DIR] [--fast]
    alignkit configs
    alignkit shard  -c CONFIG --out DIR [--split train] [--max-count N]
    alignkit export RUN --out DIR [--ckpt PATH]
    alignkit bench  NAME -c CONFIG [--set key=value ...]     (e.g. bench xray: BenchX-style comparison)

Domains add their own subcommands through ``alignkit.core.registry.COMMANDS`` (``alignkit --help`` lists them).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights only ever come from local folders
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def configs_dir() -> Path:
    from alignkit.core.config import configs_dir as find
    return find()


def resolve_config_path(name: str) -> Path:
    """A config path as given, or relative to ``configs/`` (with or without ``.yaml``)."""
    p = Path(name)
    if p.is_file():
        return p
    for cand in (configs_dir() / name, configs_dir() / f"{name}.yaml"):
        if cand.is_file():
            return cand
    return p


def _load(args: argparse.Namespace):
    from alignkit.core.config import load_config
    return load_config(resolve_config_path(args.config), args.set or [])


def cmd_train(args: argparse.Namespace) -> int:
    from alignkit.core.runner import train
    result = train(_load(args), resume=args.resume)
    if result["trainer"].is_global_zero:
        print(f"run folder: {result['run_dir']}  (metrics.json, config.yaml, checkpoints/, tb/, csv/)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from alignkit.core.runner import evaluate
    result = evaluate(_load(args), args.ckpt, Path(args.out) if args.out else None)
    _print_metrics(result["metrics"])
    print(f"metrics written to {result['run_dir'] / 'metrics.json'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from alignkit.core.registry import DEMOS
    out = Path(args.out) if args.out else Path("runs") / f"demo-{args.name}"
    DEMOS.get(args.name)(out=out, fast=args.fast)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from alignkit.core.registry import BENCHES
    BENCHES.get(args.name)(resolve_config_path(args.config), args.set or [])
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    from alignkit.core.config import list_configs
    from alignkit.plugins import load_all
    unavailable = load_all()
    root = configs_dir()
    for path in list_configs(root):
        print(path.relative_to(root))
    for domain, why in unavailable.items():
        print(f"# domain '{domain}' not importable: {why}", file=sys.stderr)
    return 0


def cmd_shard(args: argparse.Namespace) -> int:
    from alignkit.core.config import to_plain
    from alignkit.core.registry import DATASETS
    from alignkit.core.shards import shard_pattern, write_shards
    cfg = _load(args)
    dataset = DATASETS.build(cfg.data.dataset, where="data.params", split=args.split, **to_plain(cfg.data.params))
    paths = write_shards(dataset, Path(args.out), max_count=args.max_count)
    print(f"wrote {len(dataset)} samples in {len(paths)} shards; train from them with "
          f"--set data.shards='{shard_pattern(paths)}'")
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
    print(f"exported {ckpt} to {out} (config.json, model.safetensors); load it with alignkit.load('{out}')")
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
    p = argparse.ArgumentParser(prog="alignkit", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", required=True, help="YAML config (path, or name under configs/)")
        sp.add_argument("--set", nargs="*", metavar="KEY=VALUE", default=[],
                        help="override config values, e.g. --set trainer.max_steps=100 data.batch_size=32")

    sp = sub.add_parser("train", help="train a model from a config")
    with_config(sp)
    sp.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("eval", help="evaluate a checkpoint with the config's evaluators")
    with_config(sp)
    sp.add_argument("--ckpt", required=True)
    sp.add_argument("--out", help="folder for metrics.json and plots (default: RUN/eval)")
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser("demo", help="run an embedded demo end to end")
    sp.add_argument("name", help="core (more in the domain packages)")
    sp.add_argument("--out", help="output folder (default runs/demo-NAME)")
    sp.add_argument("--fast", action="store_true", help="a shorter run for tests (minutes, not tens of minutes)")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("bench", help="train the configured methods and compare them in one table")
    sp.add_argument("name", help="xray")
    with_config(sp)
    sp.set_defaults(func=cmd_bench)

    sp = sub.add_parser("configs", help="list every config in configs/")
    sp.set_defaults(func=cmd_configs)

    sp = sub.add_parser("shard", help="write a config's dataset as WebDataset tar shards")
    with_config(sp)
    sp.add_argument("--out", required=True)
    sp.add_argument("--split", default="train")
    sp.add_argument("--max-count", type=int, default=10000, help="samples per shard")
    sp.set_defaults(func=cmd_shard)

    sp = sub.add_parser("export", help="write a run as a model folder (config.json + model.safetensors)")
    sp.add_argument("run", help="run folder (holds config.yaml and checkpoints/)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--ckpt", help="checkpoint (default RUN/checkpoints/last.ckpt)")
    sp.set_defaults(func=cmd_export)

    from alignkit.core.registry import COMMANDS
    from alignkit.plugins import load_all
    load_all()  # the domains register their own subcommands (interpret, convert, collect, ...)
    for name in COMMANDS.names():
        COMMANDS.get(name)(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    from alignkit.core.registry import ConfigError
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"alignkit: config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
