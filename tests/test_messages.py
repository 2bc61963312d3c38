"""Every mistake in a request (exit 2) is one line that names the command's --help; a refusal of
the environment (exit 3) is one line without it."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from camcli.cli import app
from conftest import SAMPLE_DATA

runner = CliRunner()
PHOTO = str(SAMPLE_DATA / "val" / "cat" / "cat_00.jpg")


def mistakes(checkpoint: str, tmp: str) -> list[tuple[list[str], str]]:
    """(arguments, a part of the message) for mistakes of every kind: a value out of range, a class
    or a method that is not there, options that do not go together, files that are not what they
    should be, an unknown option."""
    ck = ["--checkpoint", checkpoint]
    return [
        (["overlay", PHOTO, *ck, "--alpha", "2", "--out-dir", tmp], "--alpha must be between 0 and 1, got 2.0"),
        (["predict", PHOTO, *ck, "--top-k", "0"], "--top-k must be at least 1, got 0"),
        (["overlay", PHOTO, *ck, "--class", "Cat", "--out-dir", tmp], "unknown class 'Cat' (did you mean 'cat'?"),
        (["overlay", PHOTO, *ck, "--class-index", "99", "--out-dir", tmp], "class index 99 out of range"),
        (["info", tmp], "is a folder"),
        (["predict", PHOTO, "--checkpoint", tmp], "is a folder"),
        (["predict", PHOTO, *ck, "--cam-size", "5", "--boxes"], "--cam-size/--cam-scales must be from"),
        (["predict", PHOTO, *ck, "--batch-size", "0"], "--batch-size must be at least 1"),
        (["overlay", PHOTO, *ck, "--top-channels", "8", "--out-dir", tmp], "--top-channels bounds Score-CAM's passes"),
        (["overlay", PHOTO, *ck, "--method", "scorecam", "--top-channels", "0", "--out-dir", tmp], "--top-channels must be at least 1"),
        (["evaluate", str(SAMPLE_DATA / "val"), *ck, "--calibrate", "--out", tmp + "/e"], "--calibrate needs --boxes"),
        (["overlay", PHOTO, *ck, "--method", "nope", "--out-dir", tmp], "'nope' is not one of"),
        (["evaluate", str(SAMPLE_DATA / "val"), *ck, "--boxes", str(SAMPLE_DATA / "val_boxes.json"), "--calibrate", "--eigen-smooth",
          "--out", tmp + "/e2"], "--calibrate measures the checkpoint's own CAM maps"),
        (["predict", PHOTO, *ck, "--bach-size", "3"], "--batch-size"),
        (["predict", tmp + "/missing.jpg", *ck], "missing.jpg"),
        (["overlay", PHOTO, *ck, "--report-limit", "0", "--out-dir", tmp], "--report-limit must be at least 1"),
        (["train", str(SAMPLE_DATA), "--epochs", "0", "--out", tmp + "/t"], "epochs"),
    ]


def test_every_mistake_is_one_line_that_names_the_commands_help(sample_run, tmp_path):
    for args, part in mistakes(str(sample_run / "best.safetensors"), str(tmp_path)):
        result = runner.invoke(app, args, prog_name="camcli")
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2, (args, result.output)
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.stderr)
        assert part in lines[0], (args, lines[0])
        assert lines[0].endswith(f"(see camcli {args[0]} --help)"), (args, lines[0])


@pytest.mark.parametrize("command", ["predict", "overlay", "evaluate"])
def test_method_completes_in_the_shell(command):
    completed = runner.invoke(app, [], prog_name="camcli", env={"_CAMCLI_COMPLETE": "complete_bash",
                                                                "COMP_WORDS": f"camcli {command} --method gr", "COMP_CWORD": "3"})
    if command == "predict":
        assert completed.stdout.split() == ["gradcam", "gradcam++", "gradcamelementwise"]
    else:
        assert set(completed.stdout.split()) == {"gradcam", "gradcam++", "gradcamelementwise"}


def test_help_shows_arguments_as_usage_lines_do():
    shown = runner.invoke(app, ["overlay", "--help"], prog_name="camcli", env={"COLUMNS": "100"}).stdout
    assert "Usage: camcli overlay [OPTIONS] INPUT..." in shown and "{" not in shown.splitlines()[0]
    assert "<list[str]>" not in shown and "INPUT...  Image files" in shown
    assert "Usage: camcli train [OPTIONS] [DATA]" in runner.invoke(app, ["train", "--help"], prog_name="camcli").stdout
    for command in ("models", "layers"):
        assert "info:" not in runner.invoke(app, [command, "--help"]).stdout


def test_every_option_a_message_can_name_is_shown_as_its_flag():
    """A library message names a parameter in backticks (`top_k`); the command line shows it as the
    flag (--top-k) only for the names it knows: every option of every command must be one."""
    import typer.main

    from camcli.cli.output import FLAGS

    group = typer.main.get_command(app)
    options = {p.name for command in group.commands.values() for p in command.params
               if p.param_type_name == "option" and p.name not in ("help", "version", "install_completion", "show_completion")}
    assert options and not options - set(FLAGS), sorted(options - set(FLAGS))
