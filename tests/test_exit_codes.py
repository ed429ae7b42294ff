"""One exit-code convention for every verb (README, "Exit codes"): 0 success; 1 some inputs bad, the rest
done; 2 a problem with the input or the environment, nothing done (one message naming it, no traceback);
3 a result refused by its quality check (`export --int8`, tested in `test_deploy`); 4 a bug (its traceback
and a request to report it); 128 + N a training stopped by signal N (tested in `test_resume_exact`).

Every verb is driven in-process with a bad argument and with a path that does not exist, so a verb that
starts raising a raw exception for a user's mistake fails here. Each code is then checked as the exit status
of a real `lesionlab` process, the processes started together (`concurrent_runs`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from concurrent_runs import run_together
from lesionlab import cli
from lesionlab.errors import INTERNAL_ERROR, SOME_INPUTS_BAD, USER_ERROR

VERBS: tuple[tuple[str, ...], ...] = (
    ("data", "inspect"), ("data", "split"), ("data", "convert"), ("train",), ("evaluate",), ("run",),
    ("study",), ("predict",), ("export",), ("bench",), ("serve",),
)
EMPTY_FILE = "empty file (0 bytes)"
PROCESS_SECONDS = 600
# A bug stood in by a library function that raises, called through the CLI's own entry point.
BUG_SCRIPT = (
    "import sys\n"
    "import lesionlab.commands.data as data_command\n"
    "from lesionlab.cli import main\n"
    "def broken(*_, **__):\n"
    "    raise RuntimeError('a bug')\n"
    "data_command.inspect_dataset = broken\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def missing_path_arguments(verb: tuple[str, ...], missing: Path) -> list[str]:
    """The verb's command line with `missing` wherever it reads its main input."""
    arguments = {
        ("data", "inspect"): [str(missing)],
        ("data", "split"): [str(missing), "--out", str(missing.parent / "split.csv")],
        ("data", "convert"): [str(missing), "--to", "prefix-gray", str(missing.parent / "out")],
        ("train",): ["--data", str(missing), "--runs-dir", str(missing.parent / "runs")],
        ("run",): ["--data", str(missing), "--runs-dir", str(missing.parent / "runs")],
        ("study",): [str(missing)],
        ("predict",): [str(missing), str(missing.parent / "image.jpg")],
    }
    return [*verb, *arguments.get(verb, [str(missing)])]


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_an_unknown_flag_exits_2(verb: tuple[str, ...], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main([*missing_path_arguments(verb, tmp_path / "nowhere"), "--no-such-flag"])
    assert stop.value.code == USER_ERROR
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_a_missing_input_exits_2_with_one_message_naming_it(verb: tuple[str, ...], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    assert cli.main(missing_path_arguments(verb, missing)) == USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"lesionlab {verb[0]}: error: ") and str(missing) in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_failed_write_exits_2_naming_the_file(tiny_ham_dataset: Callable[..., Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A write the system refuses is the user's environment, not a bug: exit 2, the file named. Here the
    output's folder is a file, which no permission can override (root included)."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    target = blocker / "split.csv"
    assert cli.main(["data", "split", str(tiny_ham_dataset()), "--out", str(target)]) == USER_ERROR
    err = capsys.readouterr().err
    assert f"{target}: cannot write it (" in err and "Traceback" not in err, err


def lesionlab(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "lesionlab", *arguments]


def test_each_exit_code_is_the_status_of_a_real_process(tiny_ham_dataset: Callable[..., Path],
                                                        tmp_path: Path) -> None:
    good = tiny_ham_dataset(images_per_class=2)
    bad = tiny_ham_dataset(images_per_class=2)
    empty = bad / "images" / "ISIC_2000001.jpg"
    empty.write_bytes(b"")
    done = run_together({
        "success": lesionlab("data", "inspect", str(good)),
        "some inputs bad": lesionlab("data", "inspect", str(bad)),
        "bad flag": lesionlab("data", "inspect", str(good), "--no-such-flag"),
        "missing input": lesionlab("data", "inspect", str(tmp_path / "nowhere")),
        "bug": [sys.executable, "-c", BUG_SCRIPT, "data", "inspect", str(good)],
    }, PROCESS_SECONDS)

    assert done["success"].code == 0, done["success"].err
    some_bad = done["some inputs bad"]
    assert some_bad.code == SOME_INPUTS_BAD, some_bad.err
    assert f"{empty}: {EMPTY_FILE}" in some_bad.out and "13 ok, 1 problem(s)" in some_bad.out
    assert "cannot identify image file" not in some_bad.out
    for name in ("bad flag", "missing input"):
        assert done[name].code == USER_ERROR, done[name].err
        assert "Traceback" not in done[name].err
    assert done["missing input"].err.startswith(f"lesionlab data: error: {tmp_path / 'nowhere'}")
    bug = done["bug"]
    assert bug.code == INTERNAL_ERROR, bug.err
    assert "Traceback" in bug.err and "RuntimeError: a bug" in bug.err
    assert "lesionlab data: internal error: this is a bug in lesionlab" in bug.err
    assert "Please report it with the traceback above" in bug.err


@pytest.mark.integration
def test_predict_exits_1_when_some_images_fail_and_2_when_all_do(tiny_run_dir: Path, shared_data_dir: Path,
                                                                 tmp_path: Path) -> None:
    """Every good image is predicted and printed either way; the empty one is named as empty."""
    good = sorted((shared_data_dir / "images").glob("ISIC_*.jpg"))[0]
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    done = run_together({
        "mixed": lesionlab("predict", str(tiny_run_dir), str(good), str(empty)),
        "all bad": lesionlab("predict", str(tiny_run_dir), str(empty)),
    }, PROCESS_SECONDS)

    mixed = done["mixed"]
    assert mixed.code == SOME_INPUTS_BAD, mixed.err
    assert good.name in mixed.out and "1 image(s) predicted, 1 failed" in mixed.out
    assert f"{empty}: {EMPTY_FILE}" in mixed.err and "Traceback" not in mixed.err
    all_bad = done["all bad"]
    assert all_bad.code == USER_ERROR, all_bad.err
    assert "0 image(s) predicted, 1 failed" in all_bad.out and f"{empty}: {EMPTY_FILE}" in all_bad.err
