"""``keyherald watch``: help documents every setting; a bad environment exits 2 with one line."""

import base64
import os

import pytest

from keyherald.cli import main
from watcher.settings import WatchSettings

KEK = base64.b64encode(bytes(range(7, 39))).decode()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("KEYHERALD_"):
            monkeypatch.delenv(name)


def test_help_documents_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["watch", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in WatchSettings.model_fields:
        assert f"KEYHERALD_WATCH_{name.upper()}" in out


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"KEYHERALD_WATCH_KEK": KEK}, "KEYHERALD_WATCH_UPSTREAMS is not set"),
        ({"KEYHERALD_WATCH_UPSTREAMS": "https://idp.example/"}, "KEYHERALD_WATCH_KEK is not set"),
        (
            {"KEYHERALD_WATCH_UPSTREAMS": "http://idp.example/", "KEYHERALD_WATCH_KEK": KEK},
            "plain http",
        ),
        ({"KEYHERALD_WATCH_UPSTREAMS": "idp.example", "KEYHERALD_WATCH_KEK": KEK}, "absolute"),
        ({"KEYHERALD_WATCH_UPSTREAMS": " , ", "KEYHERALD_WATCH_KEK": KEK}, "names no upstream"),
        (
            {"KEYHERALD_WATCH_UPSTREAMS": "https://a/,https://a/", "KEYHERALD_WATCH_KEK": KEK},
            "twice",
        ),
        ({"KEYHERALD_WATCH_UPSTREAMS": "https://a/", "KEYHERALD_WATCH_KEK": "xx"}, "WATCH_KEK"),
        (
            {
                "KEYHERALD_WATCH_UPSTREAMS": "https://a/",
                "KEYHERALD_WATCH_KEK": KEK,
                "KEYHERALD_WATCH_REDIS_URL": "redis+sentinel://127.0.0.1:1",
            },
            "KEYHERALD_WATCH_REDIS_URL (redis+sentinel://127.0.0.1:1): no service name",
        ),
    ],
)
def test_a_bad_environment_exits_2_with_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    expected: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["watch", "--port", "1"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("keyherald watch: ") and expected in line
    assert KEK not in line
