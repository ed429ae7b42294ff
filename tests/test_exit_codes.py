"""One exit-code convention for every verb (README, "Exit codes"): 0 success, 1 a bug (an unexpected
exception, with its traceback), 2 a problem with the input (bad arguments, a missing or unusable file; one
message naming it, no traceback), 3 `export --int8` refused, 128 + N a training stopped by signal N.

Every verb is driven here with a bad argument and with a path that does not exist, so a verb that starts
raising a raw exception (exit 1 and a traceback) for a user's mistake fails this test.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lesionlab import cli
from lesionlab.errors import INTERNAL_ERROR, USER_ERROR

VERBS: tuple[tuple[str, ...], ...] = (
    ("data", "inspect"), ("data", "split"), ("data", "convert"), ("train",), ("evaluate",), ("run",),
    ("study",), ("predict",), ("export",), ("bench",), ("serve",),
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


def test_success_exits_0(tiny_ham_dataset: Callable[..., Path]) -> None:
    assert cli.main(["data", "inspect", str(tiny_ham_dataset())]) == 0


def test_a_bug_is_not_hidden_and_exits_1(monkeypatch: pytest.MonkeyPatch,
                                        tiny_ham_dataset: Callable[..., Path]) -> None:
    """An unexpected exception leaves `main` with its traceback, so Python exits with 1, its own code."""
    import lesionlab.commands.data as data_command

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(data_command, "inspect_dataset", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["data", "inspect", str(tiny_ham_dataset())])
    assert INTERNAL_ERROR == 1


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
