"""Command-line usage mistakes (unknown or missing options) end in click's usage line, never a traceback."""

import pytest

from dhumandiff.cli.main import main


@pytest.mark.parametrize("argv", [["generate", "--bogus"], ["serve", "--port"], ["export", "onnx", "tiny"],
                                  ["train", "--data"]])
def test_usage_errors_are_one_short_message(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and "Error" in err
