"""Smoke tests of every `alignkit` subcommand, in-process through `alignkit.cli.main`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignkit.cli import main

CONFIG = "core/shapes_demo.yaml"


def _tiny(root: Path, out: Path, name: str = "cli") -> list:
    return ["--set", f"data.params.root={root}", f"out_dir={out}", f"name={name}", "trainer.max_steps=4",
            "data.batch_size=16", "model.towers.image.params.widths=[8,16]", "trainer.val_check_interval=null",
            "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
            "eval.0.params.num_candidates=20"]


def test_configs_lists_every_yaml(capsys: pytest.CaptureFixture) -> None:
    assert main(["configs"]) == 0
    listed = capsys.readouterr().out.split()
    assert "core/shapes_demo.yaml" in listed


def test_train_eval_export_shard(shapes_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "-c", CONFIG, *_tiny(shapes_tiny, tmp_path)]) == 0
    run = tmp_path / "cli"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["trainer/global_step"] == 4
    assert 0.0 <= metrics["retrieval/text2image_R@1"] <= 1.0 and "zero_shot/top1" in metrics
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "tb").rglob("events.out.tfevents*")) and (run / "csv" / "metrics.csv").is_file()
    assert (run / "retrieval_text2image_similarity.png").is_file()
    assert (run / "embeddings.safetensors").is_file()

    # eval: same figures from the checkpoint, written to --out
    out = tmp_path / "eval"
    assert main(["eval", "-c", CONFIG, *_tiny(shapes_tiny, tmp_path), "--ckpt",
                 str(run / "checkpoints" / "last.ckpt"), "--out", str(out)]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["retrieval/text2image_R@1"] == pytest.approx(metrics["retrieval/text2image_R@1"])

    # export + load: the exported model embeds like the trained one
    exp = tmp_path / "export"
    assert main(["export", str(run), "--out", str(exp)]) == 0
    assert {"config.json", "model.safetensors"} <= {p.name for p in exp.iterdir()}
    import alignkit
    model = alignkit.load(exp)
    assert set(model.modalities) == {"image", "text"}
    z = model.embed("text", ["a red circle", "a blue star"])
    assert z.shape == (2, 128) and torch.allclose(z.norm(dim=-1), torch.ones(2), atol=1e-5)

    # shard: WebDataset tars + a pattern that train accepts
    shards = tmp_path / "shards"
    assert main(["shard", "-c", CONFIG, *_tiny(shapes_tiny, tmp_path), "--out", str(shards),
                 "--max-count", "10"]) == 0
    assert len(list(shards.glob("*.tar"))) == 4  # 32 training items, 10 per shard
    assert "data.shards=" in capsys.readouterr().out


def test_config_error_exit_code(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "-c", CONFIG, "--set", "data.params.root=/x", "trainer.max_step=3"]) == 2
    err = capsys.readouterr().err
    assert "trainer.max_step" in err and "trainer.max_steps" in err


def test_resume_requires_checkpoint(tmp_path: Path, shapes_tiny: Path) -> None:
    assert main(["train", "-c", CONFIG, *_tiny(shapes_tiny, tmp_path, "none"), "--resume"]) == 2


def test_train_with_ddp_on_two_cpu_processes(shapes_tiny: Path, tmp_path: Path) -> None:
    """DDP is a config change: `--set trainer.strategy=ddp trainer.devices=2` launches 2 gloo processes."""
    import subprocess
    import sys
    cmd = [sys.executable, "-m", "alignkit.cli", "train", "-c", CONFIG, *_tiny(shapes_tiny, tmp_path, "ddp"),
           "trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "data.batch_size=8",
           "trainer.max_steps=3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run folder:") == 1  # reported by rank 0 only
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["trainer/global_step"] == 3 and "retrieval/text2image_R@1" in metrics


def test_domains_register_their_own_subcommands(capsys: pytest.CaptureFixture) -> None:
    from alignkit.core.registry import COMMANDS

    def add_parser(sub) -> None:
        sp = sub.add_parser("echo-args", help="test command")
        sp.add_argument("word")
        sp.set_defaults(func=lambda args: print(f"got {args.word}") or 3)

    COMMANDS.register("echo-args")(add_parser)
    try:
        assert main(["echo-args", "hello"]) == 3
        assert "got hello" in capsys.readouterr().out
    finally:
        COMMANDS._entries.pop("echo-args")


def test_overrides_are_bare_key_values_set_items_or_dotted_options() -> None:
    """Hydra's `key=value`, the `--set` list and LightningCLI's `--data.batch_size=32` all become overrides; a
    positional after `--set` stays a positional."""
    from alignkit.cli import build_parser, split_overrides
    rest, overrides = split_overrides(["bench", "--set", "a.b=1", "xray", "-c", "x.yaml", "c=[1, 2]",
                                       "--data.batch_size=32", "--set=objectives.0.loss=siglip"])
    assert rest == ["bench", "xray", "-c", "x.yaml"]
    assert overrides == ["a.b=1", "c=[1, 2]", "data.batch_size=32", "objectives.0.loss=siglip"]
    assert build_parser().parse_args(rest).name == "xray"


@pytest.mark.parametrize("form", [["data.batch_size=0"], ["--set", "data.batch_size=0"], ["--data.batch_size=0"]])
def test_every_override_form_reaches_the_config(form: list, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "-c", "core/shapes_demo", "data.params.root=/nowhere", *form]) == 2
    assert "data.batch_size = 0: must be >= 1" in capsys.readouterr().err


def test_a_command_without_a_config_refuses_overrides() -> None:
    with pytest.raises(SystemExit):
        main(["configs", "data.batch_size=4"])


def test_resume_takes_latest_or_a_checkpoint_path(tmp_path: Path) -> None:
    from alignkit.cli import build_parser
    from alignkit.core.config import load_config
    from alignkit.core.registry import ConfigError
    from alignkit.core.runner import resume_checkpoint
    parse = build_parser().parse_args
    assert parse(["train", "-c", CONFIG]).resume is None
    assert parse(["train", "-c", CONFIG, "--resume"]).resume == "latest"
    assert parse(["train", "-c", CONFIG, "--resume", "latest"]).resume == "latest"
    assert parse(["train", "-c", CONFIG, "--resume", "run/step0000100.ckpt"]).resume == "run/step0000100.ckpt"

    cfg = load_config(_config_path(), [f"out_dir={tmp_path}", "name=r", "data.params.root=/x"])
    assert resume_checkpoint(cfg, None) is None  # a new run
    with pytest.raises(ConfigError, match="no checkpoint at .*last.ckpt"):
        resume_checkpoint(cfg, "latest")
    with pytest.raises(ConfigError, match="no checkpoint at .*other.ckpt"):
        resume_checkpoint(cfg, str(tmp_path / "other.ckpt"))
    (tmp_path / "other.ckpt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="other.ckpt: not a torch checkpoint"):  # checked before the run starts
        resume_checkpoint(cfg, str(tmp_path / "other.ckpt"))
    torch.save({"state_dict": {"w": torch.zeros(2)}, "global_step": 3}, tmp_path / "other.ckpt")
    assert resume_checkpoint(cfg, str(tmp_path / "other.ckpt")) == tmp_path / "other.ckpt"
    last = tmp_path / "r" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "global_step": 5}, last)
    assert resume_checkpoint(cfg, "latest") == last and resume_checkpoint(cfg, True) == last
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        resume_checkpoint(cfg, None)


def _config_path() -> Path:
    from alignkit.core.config import resolve_config_path
    return resolve_config_path(CONFIG)


def test_a_missing_data_root_is_two_lines_naming_it_with_exit_2(tmp_path: Path) -> None:
    """As a user sees it: a fresh process, its status and stderr."""
    import subprocess
    import sys
    missing = tmp_path / "no-such-folder"
    done = subprocess.run([sys.executable, "-m", "alignkit.cli", "train", "-c", "core/shapes_demo",
                           f"data.params.root={missing}", f"out_dir={tmp_path}"], capture_output=True, text=True)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert err[-2].startswith("alignkit: error:") and str(missing) in err[-2] and "--debug" in err[-1]


def test_a_bad_value_names_its_key_and_debug_shows_the_traceback(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    args = ["train", "-c", "core/shapes_demo", f"data.params.root={tmp_path}", "data.batch_size=-4"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "data.batch_size" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="data.batch_size"):
        main(args + ["--debug"])


def test_an_error_from_a_loader_worker_prints_the_original_last_line() -> None:
    from alignkit.cli import user_error_message
    wrapped = ValueError("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                         "last):\n  File \"x.py\", line 1\nValueError: cannot decode image 'a.png' (pairs.csv row 3)")
    assert user_error_message(wrapped) == ("alignkit: error: ValueError: cannot decode image 'a.png' "
                                           "(pairs.csv row 3)")
