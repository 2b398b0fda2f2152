"""``leukolab serve`` and ``python -m leukolab.serving`` take the same options."""

import pytest

from leukolab import cli
from leukolab.serving import __main__ as serving_main


def options_help(main, argv: list[str], capsys) -> str:
    """The options part of a command's ``--help``."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    return capsys.readouterr().out.split("options:", 1)[1]


def test_both_commands_take_the_same_options(capsys, monkeypatch):
    monkeypatch.setenv("LEUKOLAB_MODEL_URI", "models:/other@challenger")  # read by the settings, not the parser
    served = options_help(serving_main.main, ["--help"], capsys)
    assert options_help(cli.main, ["serve", "--help"], capsys) == served
    for option in ("--host", "--port", "--model-uri", "127.0.0.1", "8000", "$LEUKOLAB_MODEL_URI"):
        assert option in served
    assert "challenger" not in served
