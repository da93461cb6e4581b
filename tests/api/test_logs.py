"""gitorch.logs: one JSON object per line, readable text, secrets redacted by name."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from gitorch.errors import ConfigError
from gitorch.logs import REDACTED, setup_logging


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root")
def test_json_lines_carry_the_fields_and_extras() -> None:
    stream = io.StringIO()
    setup_logging("info", "json", stream=stream)
    log = logging.getLogger("gitorch.daemon")
    log.debug("not shown at info")
    log.info("revision %s applied", "3f2a9c1e", extra={"service": "web", "revision": "3f2a"})
    log.warning("two\nlines")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed", extra={"msg_id": 7})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # one line per record, whatever is inside
    first, second, third = (json.loads(line) for line in lines)
    assert first["level"] == "info" and first["logger"] == "gitorch.daemon"
    assert first["msg"] == "revision 3f2a9c1e applied"
    assert (first["service"], first["revision"]) == ("web", "3f2a")
    assert first["ts"].endswith("Z") and first["ts"][10] == "T"
    assert second["msg"] == "two\nlines"
    assert third["level"] == "error" and third["msg_id"] == 7
    assert "ValueError: boom" in third["exc"]


@pytest.mark.usefixtures("restore_root")
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_secret_looking_fields_are_redacted(fmt: str) -> None:
    stream = io.StringIO()
    setup_logging("debug", fmt, stream=stream)  # type: ignore[arg-type]
    logging.getLogger("gitorch.x").info(
        "starting",
        extra={
            "env": {"DB_PASSWORD": "hunter2"},
            "webhook_secret": "hunter2",
            "api_token": "hunter2",
            "Authorization": "Bearer hunter2",
            "service": "web",
        },
    )
    out = stream.getvalue()
    assert "hunter2" not in out
    assert out.count(REDACTED) == 4
    assert "web" in out


@pytest.mark.usefixtures("restore_root")
def test_text_is_readable() -> None:
    stream = io.StringIO()
    setup_logging("debug", "text", stream=stream)
    logging.getLogger("gitorch.api").debug(
        "GET /healthz 200", extra={"status": 200, "remote": "127.0.0.1", "note": "a b"}
    )
    line = stream.getvalue().rstrip("\n")
    assert " DEBUG   gitorch.api: GET /healthz 200 " in line
    assert line.endswith('status=200 remote=127.0.0.1 note="a b"')


@pytest.mark.usefixtures("restore_root")
def test_setup_is_idempotent_and_leaves_other_handlers() -> None:
    foreign = logging.NullHandler()
    logging.getLogger().addHandler(foreign)
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", "json", stream=first)
    setup_logging("warning", "text", stream=second)
    logging.getLogger("gitorch").warning("once")
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1
    assert foreign in logging.getLogger().handlers
    assert logging.getLogger().level == logging.WARNING


@pytest.mark.usefixtures("restore_root")
def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown log level"):
        setup_logging("verbose", "json")
    with pytest.raises(ConfigError, match="unknown log format"):
        setup_logging("info", "xml")  # type: ignore[arg-type]
