"""The `msk-cds` command line: subcommand wiring and the serve options."""
from __future__ import annotations

import pytest

from service import cli, cmd_serve


def test_serve_defaults_and_dev_no_auth_flag():
    args = cli.build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.dev_no_auth) == ("127.0.0.1", 8080, False)
    assert cmd_serve.settings_from(args) == {}
    args = cli.build_parser().parse_args(["serve", "--dev-no-auth", "--port", "9090", "--host", "0.0.0.0"])
    assert (args.host, args.port) == ("0.0.0.0", 9090)
    assert cmd_serve.settings_from(args) == {"AUTH_DISABLED": True}


def test_every_listed_command_has_add_arguments_and_run():
    import importlib

    for _name, module_name, help_text in cli.COMMANDS:
        module = importlib.import_module(module_name)
        assert callable(module.add_arguments) and callable(module.run) and help_text


def test_unknown_or_missing_command_exits_with_usage():
    with pytest.raises(SystemExit) as excinfo:
        cli.main([])
    assert excinfo.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["no-such-command"])


def test_settings_mapping_wins_over_environment(monkeypatch, tmp_path):
    from service.config import ConfigError, load_settings

    monkeypatch.setenv("FHIR_MAX_PAGES", "7")
    monkeypatch.setenv("AUTH_DISABLED", "yes")
    settings = load_settings({"FHIR_MAX_PAGES": 2})
    assert settings["FHIR_MAX_PAGES"] == 2 and settings["AUTH_DISABLED"] is True
    assert settings["DATABASE_URL"].endswith("instance/msk_cds.sqlite3")
    assert settings["FHIR_FETCH_DEADLINE_SECONDS"] == 4.0 and settings["MAX_REQUEST_BYTES"] == 5 * 1024 * 1024
    monkeypatch.setenv("FHIR_FETCH_DEADLINE_SECONDS", "soon")
    with pytest.raises(ConfigError, match="FHIR_FETCH_DEADLINE_SECONDS") as excinfo:
        load_settings()
    assert "soon" not in str(excinfo.value)
    monkeypatch.delenv("FHIR_FETCH_DEADLINE_SECONDS")
    fixed = load_settings({"FIXED_NOW": "2026-01-02T03:04:05"})["FIXED_NOW"]
    assert fixed.tzinfo is not None and fixed.year == 2026


def test_fixed_now_reaches_the_hook(app_factory):
    from service.cds import evaluation_time

    app = app_factory(FIXED_NOW="2026-05-01T12:00:00Z")
    with app.test_request_context():
        assert evaluation_time().isoformat() == "2026-05-01T12:00:00+00:00"
