"""The help text reads as a Typer user expects: flags as flags, defaults shown (issue 17)."""

import re

import pytest
from typer.testing import CliRunner

from centerexp.cli import app

runner = CliRunner()


def help_text(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    return result.output


def option_line(text: str, flag: str) -> str:
    lines = [line for line in text.splitlines() if re.search(rf"(^|[\s│]){re.escape(flag)}(\s|$)", line)]
    assert lines, f"{flag} not in help:\n{text}"
    return lines[0]


@pytest.mark.parametrize("command", [[], ["train"], ["compare"], ["plot"], ["reproduce"], ["parity"], ["bench"]])
def test_flags_take_no_value_and_no_stray_spaces(command):
    text = help_text(*command)
    assert "<bool>" not in text, text
    assert not re.search(r"\w \.(\s|$)", text), text  # a default eaten as markup left "folders ." behind
    assert not re.search(r"--help\s+\S*(BOOLEAN|bool)", text)


def test_train_help_shows_flags_values_and_defaults():
    text = help_text("train")
    for flag in ("--overwrite", "--quiet", "--allow-config-change", "--deterministic"):
        assert not re.search(rf"{flag}\s+(<\w+>|BOOLEAN|TEXT|PATH)", option_line(text, flag)), option_line(text, flag)
    assert re.search(r"--runs-dir\s+(<path>|PATH)", text)
    assert re.search(r"--threads\s+(<int|INTEGER)", text)
    assert "[default: (runs)]" in text and "[default: (the config file's stem)]" in text


def test_reproduce_help_shows_profile_defaults():
    text = help_text("reproduce")
    assert "[default: (the profile's)]" in text and "[default: (runs/EXPERIMENT/PROFILE)]" in text
