"""The attrlab command line: train, run (sweeps) and book."""

from __future__ import annotations

from pathlib import Path

import pytest

import attrlab.__main__ as cli
from attrlab.train import Run

ROOT = Path(__file__).resolve().parents[1]


def test_train_subcommand_trains_and_resumes(tmp_path, capsys):
    args = ["train", "--run-dir", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "400", "--no-progress"]
    assert cli.main(args) == 0
    run = Run(tmp_path / "run")
    assert run.complete and run.config.epochs == 1
    steps = len(run.metrics)
    assert cli.main(args) == 0  # a finished run is reopened, not retrained
    assert len(Run(tmp_path / "run").metrics) == steps
    assert f"{steps} steps" in capsys.readouterr().out


def test_train_subcommand_reports_bad_values():
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--run-dir", "x", "--optimizer", "rmsprop"])
    assert exit_info.value.code == 2


def test_run_dry_run_lists_points_without_running(tmp_path, capsys):
    sweep = tmp_path / "sweep.yml"
    sweep.write_text(f"chapter: {ROOT / 'book' / 'training.md'}\noutput: out\ngrid: {{model: [shallow, deep]}}\n")
    assert cli.main(["run", str(sweep), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "model-shallow: to run" in out and "model-deep: to run" in out and "2 points, 2 to run" in out
    assert not (tmp_path / "out").exists()


def test_run_rejects_unknown_parameters_before_running(tmp_path, capsys):
    sweep = tmp_path / "sweep.yml"
    sweep.write_text(f"chapter: {ROOT / 'book' / 'training.ipynb'}\noutput: out\nfixed: {{epoch: 1}}\n")
    assert cli.main(["run", str(sweep)]) == 2
    error = capsys.readouterr().err
    assert "unknown parameter 'epoch'" in error and "epochs: int" in error
    assert not (tmp_path / "out").exists()


def test_book_subcommand_builds_strictly_from_the_root(monkeypatch, tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "_config.yml").write_text("title: t\n")
    (tmp_path / "book" / "_toc.yml").write_text("format: jb-book\nroot: intro\n")
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda command, cwd: calls.append((command, cwd)) or 0)
    monkeypatch.chdir(tmp_path / "book")  # found by walking up from the cwd
    assert cli.main(["book"]) == 0
    command, cwd = calls[0]
    assert cwd == tmp_path
    assert command[1:3] == ["build", str(tmp_path / "book")]
    assert command[command.index("--config") + 1] == str(tmp_path / "_config.yml")
    assert command[command.index("--toc") + 1] == str(tmp_path / "book" / "_toc.yml")
    assert command[command.index("--path-output") + 1] == str(tmp_path)
    assert "-W" in command and "--keep-going" in command and "--all" in command
    assert cli.main(["book", "--no-strict", "--incremental"]) == 0
    assert "-W" not in calls[1][0] and "--all" not in calls[1][0]


def test_book_subcommand_outside_a_book_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["book"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("attrlab book: error: no attrlab book") and error.count("\n") == 1
    with pytest.raises(FileNotFoundError, match="no attrlab book"):
        cli.main(["book", "--debug"])  # the traceback on demand
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", "book"])


def test_run_dry_run_checks_values_against_their_choices(tmp_path, capsys):
    sweep = tmp_path / "sweep.yml"
    sweep.write_text(f"chapter: {ROOT / 'book' / 'training.md'}\noutput: out\ngrid: {{model: [resnet]}}\n")
    assert cli.main(["run", str(sweep), "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert "parameter 'model' has invalid value 'resnet'; valid choices:" in error and "shallow" in error
    assert not (tmp_path / "out").exists()


def test_run_refuses_zero_workers(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", str(tmp_path / "sweep.yml"), "--workers", "0"])
    assert exit_info.value.code == 2
    assert "--workers: must be a positive integer, got '0'" in capsys.readouterr().err


def _one_line_error(capsys, argv, command):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"attrlab {command}: error: ") and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    return captured.err


def test_train_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse lists the valid datasets
        cli.main(["train", "--run-dir", str(tmp_path / "a"), "--dataset", "mnist"])
    assert exit_info.value.code == 2 and "invalid choice: 'mnist'" in capsys.readouterr().err
    error = _one_line_error(
        capsys,
        [
            "train",
            "--run-dir",
            str(tmp_path / "a"),
            "--dataset",
            "fashionmnist",
            "--data-root",
            str(tmp_path / "nowhere"),
        ],
        "train",
    )
    assert "does not exist" in error and not (tmp_path / "a").exists()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"epochs": 9}')
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "step-00000001.pt").write_bytes(b"x")
    error = _one_line_error(capsys, ["train", "--run-dir", str(run_dir), "--epochs", "1", "--no-progress"], "train")
    assert "holds a run with a different configuration" in error


def test_sweep_errors_name_the_file_and_line(tmp_path, capsys):
    sweep = tmp_path / "sweep.yml"
    sweep.write_text(f"chapter: {ROOT / 'book' / 'training.md'}\noutput: out\ngrid: {{model: [shallow, deep]\n")
    error = _one_line_error(capsys, ["run", str(sweep), "--dry-run"], "run")
    assert f"{sweep}, line 4" in error and "not valid YAML" in error
    _one_line_error(capsys, ["run", str(tmp_path / "none.yml")], "run")


def test_dead_scheduler_is_one_line(tmp_path, capsys, monkeypatch):
    import socket

    import attrlab.sweep

    monkeypatch.setattr(attrlab.sweep, "SCHEDULER_TIMEOUT", 2)
    with socket.socket() as probe:  # a free port: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sweep = tmp_path / "sweep.yml"
    sweep.write_text(f"chapter: {ROOT / 'book' / 'training.md'}\noutput: out\nfixed: {{epochs: 1}}\n")
    error = _one_line_error(capsys, ["run", str(sweep), "--scheduler", f"tcp://127.0.0.1:{port}"], "run")
    assert f"cannot reach a Dask scheduler at 'tcp://127.0.0.1:{port}'" in error


def test_help_is_plain_text_and_every_option_is_explained(capsys):
    parser = cli.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and ":mod:" not in text and ":func:" not in text
    subparsers = next(a for a in parser._actions if a.dest == "command")
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help and len(action.help) > 12, f"attrlab {name} {action.option_strings}: no help text"
    train_help = subparsers.choices["train"].format_help()
    assert "{digits,canvas,fashionmnist,cifar10}" in train_help and "images per optimiser step" in train_help
