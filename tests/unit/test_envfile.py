from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlpipeline.local.envfile import load_env_file, parse_env_file


def test_parse_quotes_comments_and_export(tmp_path: Path):
    path = tmp_path / ".env"
    path.write_text("# comment\n\nexport A=1\nB='two words'\nC={\"k\": 1}\nD=\n")
    assert parse_env_file(path) == {"A": "1", "B": "two words", "C": '{"k": 1}', "D": ""}


def test_malformed_line_names_file_and_line(tmp_path: Path):
    path = tmp_path / ".env"
    path.write_text("A=1\nnot a setting\n")
    with pytest.raises(ValueError, match=r"\.env:2: expected KEY=VALUE"):
        parse_env_file(path)


def test_real_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / ".env"
    path.write_text("ENVFILE_TEST_ONE=from-file\nENVFILE_TEST_TWO=from-file\n")
    monkeypatch.setenv("ENVFILE_TEST_ONE", "from-env")
    monkeypatch.delenv("ENVFILE_TEST_TWO", raising=False)
    try:
        applied = load_env_file(path)
        assert os.environ["ENVFILE_TEST_ONE"] == "from-env"
        assert applied == {"ENVFILE_TEST_TWO": "from-file"}
    finally:
        os.environ.pop("ENVFILE_TEST_TWO", None)
