"""The counter, the stateful example app, in both flavours (Python for the process driver,
the busybox image for Docker): it counts its starts in its data folder, serves the count,
reports a second writer at the same time, and can only read through a readOnly mount."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from shop_helpers import RunningApp, RunningContainer, docker, eventually, fields, http_get

StartApp = Callable[..., RunningApp]
RunContainer = Callable[..., RunningContainer]
IMAGE = "gitorch-example/counter:1"


def test_the_python_counter_counts_its_starts_in_its_folder(
    start_app: StartApp, tmp_path: Path
) -> None:
    for expected in (1, 2):
        running = start_app("counter", {"VOLUME_DATA": str(tmp_path), "VERSION": "3"})
        page = fields(http_get(running.url + "/").body)
        assert page["starts"] == str(expected) and page["version"] == "3"
        assert (page["conflicts"], page["writable"]) == ("0", "yes")
        assert http_get(running.url + "/count").body == f"{expected}\n"
        assert running.terminate()[0] == 0
    lines = (tmp_path / "starts.log").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["1", "2"]


def test_the_python_counter_reports_two_writers_at_once(
    start_app: StartApp, tmp_path: Path
) -> None:
    first = start_app("counter", {"DATA_DIR": str(tmp_path)})
    second = start_app("counter", {"DATA_DIR": str(tmp_path)})
    eventually(
        lambda: fields(http_get(second.url + "/").body)["conflicts"] != "0",
        what="the overlap seen",
    )
    assert (tmp_path / "conflicts.log").read_text().count("writing at the same time") >= 1
    first.terminate()
    second.terminate()


def test_the_python_counter_as_a_reader_writes_nothing(start_app: StartApp, tmp_path: Path) -> None:
    (tmp_path / "starts").write_text("7\n")
    reader = start_app("counter", {"DATA_DIR": str(tmp_path), "COUNTER_MODE": "reader"})
    assert fields(http_get(reader.url + "/").body)["starts"] == "7"
    reader.terminate()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["starts"]


@pytest.mark.docker
def test_the_counter_image_counts_reports_and_reads(
    run_container: RunContainer, tmp_path: Path
) -> None:
    data = ("-v", f"{tmp_path}:/var/lib/counter")
    env = {"VOLUME_DATA": "/var/lib/counter"}
    first = run_container(IMAGE, env, extra=data)
    assert fields(http_get(first.url + "/").body)["starts"] == "1"
    docker("stop", "-t", "10", first.id)
    second = run_container(IMAGE, env, extra=data)
    page = fields(http_get(second.url + "/").body)
    assert (page["starts"], page["conflicts"], page["writable"]) == ("2", "0", "yes")
    assert http_get(second.url + "/cgi-bin/count").body == "2\n"

    third = run_container(IMAGE, env, extra=data)  # while the second one runs
    eventually(
        lambda: fields(http_get(third.url + "/").body)["conflicts"] != "0",
        what="the overlap seen",
    )
    docker("stop", "-t", "10", second.id, third.id)

    ro = ("-v", f"{tmp_path}:/var/lib/counter:ro")
    reader = run_container(IMAGE, {**env, "COUNTER_MODE": "reader"}, extra=ro)
    page = fields(http_get(reader.url + "/").body)
    assert (page["starts"], page["writable"]) == ("3", "no")
