"""`tasktune ui` safety checks and the app's construction (no server, no browser)."""

from __future__ import annotations

import pytest

from tasktune.cli import main
from tasktune.ui.app import UIError, build_app, check_host, is_loopback, parse_auth


def test_loopback_only_without_auth():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")
    check_host("127.0.0.1", None)
    check_host("0.0.0.0", ("me", "secret"))
    with pytest.raises(UIError, match="--auth"):
        check_host("0.0.0.0", None)


def test_auth_format():
    assert parse_auth("me:se:cret") == ("me", "se:cret")
    assert parse_auth(None) is None
    for bad in ("me", ":x", "me:"):
        with pytest.raises(UIError):
            parse_auth(bad)


def test_cli_refuses_an_exposed_host(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TASKTUNE_UI_AUTH", raising=False)
    assert main(["ui", "--host", "0.0.0.0", "--runs-dir", str(tmp_path)]) == 2
    assert "--auth" in capsys.readouterr().out


def test_app_builds_with_every_tab(tmp_path):
    app = build_app(tmp_path / "runs", start_runner=False)
    labels = {getattr(block, "label", None) for block in app.blocks.values()}
    assert {"Data", "Train", "Evaluate", "Chat", "Export", "Runs"} <= labels
    assert (tmp_path / "runs" / ".tasktune-ui" / "jobs").is_dir()
