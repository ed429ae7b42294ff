"""The command line's small promises: --version, one `--resume` on train and run (a folder, or --name),
and help that shows only defaults that exist."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from lesionlab import __version__
from lesionlab.cli import build_parser, main
from lesionlab.commands._common import resumed_run_dir
from lesionlab.errors import ConfigError


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"lesionlab {__version__}"


@pytest.mark.parametrize("verb", ["train", "run"])
@pytest.mark.parametrize(("arguments", "expected"), [
    (["--resume", "runs/a"], Path("runs/a")),
    (["--resume", "--name", "a"], Path("runs/a")),
    (["--resume", "--name", "a", "--runs-dir", "elsewhere"], Path("elsewhere/a")),
    (["--resume", "elsewhere/a", "--name", "a"], Path("elsewhere/a")),
    ([], None),
])
def test_resume_takes_a_folder_or_a_name_on_both_verbs(verb: str, arguments: list[str],
                                                       expected: Path | None) -> None:
    args = build_parser().parse_args([verb, *arguments])
    assert resumed_run_dir(args) == expected


def test_resume_needs_a_run() -> None:
    with pytest.raises(ConfigError, match="--name"):
        resumed_run_dir(build_parser().parse_args(["train", "--resume"]))
    with pytest.raises(ConfigError, match="different runs"):
        resumed_run_dir(build_parser().parse_args(["run", "--resume", "runs/a", "--name", "b"]))


def test_convert_help_shows_no_unused_default() -> None:
    actions = build_parser()._subparsers._group_actions[0].choices["data"]
    data_actions = next(a for a in actions._actions if isinstance(a, argparse._SubParsersAction))
    help_text = data_actions.choices["convert"].format_help()
    assert "../shared" not in help_text and "required" in help_text


def test_run_scores_the_test_part_with_tta_unless_told_not_to() -> None:
    from lesionlab.commands.run import test_views
    from lesionlab.views import parse_views

    parser = build_parser()
    assert test_views(parser.parse_args(["run"])) == parse_views(None)
    assert test_views(parser.parse_args(["run", "--tta-views", "hflip"])) == ("identity", "hflip")
    assert test_views(parser.parse_args(["run", "--no-tta"])) is None
