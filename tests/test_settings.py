"""Settings: lookup order, environment overrides, catalog defaults and clear errors (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.cli import main
from aggregator.errors import ConfigError
from aggregator.settings import display_name, load_settings, parse_duration

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("2m", 120), ("1h30m", 5400), ("7d", 604800), ("500ms", 0.5), (45, 45), ("1.5h", 5400)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "2x", "m2", "1h 2q", "-5m", True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_catalog_fills_a_bare_newsnow_source(tmp_path: Path) -> None:
    path = write(tmp_path, '[[sources]]\nid = "zhihu"\nkind = "newsnow"\n')
    settings = load_settings(str(path), environ={})
    source = settings.source("zhihu")
    assert source.interval_s == 600
    assert source.name == "知乎"
    assert source.url == "https://newsnow.busiyi.world/api/s?id=zhihu&latest"
    assert display_name(source) == "NewsNow 知乎"


def test_per_source_base_url_and_newsnow_id(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[newsnow]\nbase_url = "http://nn.local:4444/"\n'
        '[[sources]]\nid = "wb"\nkind = "newsnow"\nnewsnow_id = "weibo"\n'
        '[[sources]]\nid = "zh"\nkind = "newsnow"\nnewsnow_id = "zhihu"\nbase_url = "http://other"\n',
    )
    settings = load_settings(str(path), environ={})
    assert settings.source("wb").url == "http://nn.local:4444/api/s?id=weibo&latest"
    assert settings.source("wb").interval_s == 120  # weibo's catalog interval
    assert settings.source("zh").url == "http://other/api/s?id=zhihu&latest"


def test_environment_overrides_a_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[store]\ndata_dir = "/nope"\n')
    env = {
        "AGGREGATOR_STORE__DATA_DIR": str(tmp_path / "d"),
        "AGGREGATOR_SCORE__HEAT_WEIGHT": "0.25",
        "AGGREGATOR_SCORE__HALF_LIFE": "2h",
    }
    settings = load_settings(str(path), environ=env)
    assert settings.store.data_dir == str(tmp_path / "d")
    assert settings.score.heat_weight == 0.25
    assert settings.score.half_life == 7200


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = write(tmp_path, '[display]\ntimezone = "UTC"\n')
    from_env = tmp_path / "env.toml"
    from_env.write_text('[display]\ntimezone = "Europe/Paris"\n')
    local_dir = tmp_path / "cwd"
    local_dir.mkdir()
    (local_dir / "settings.toml").write_text('[display]\ntimezone = "Asia/Tokyo"\n')
    monkeypatch.chdir(local_dir)
    assert load_settings(str(explicit), environ={"AGGREGATOR_CONFIG": str(from_env)}).display.timezone == "UTC"
    assert load_settings(None, environ={"AGGREGATOR_CONFIG": str(from_env)}).display.timezone == "Europe/Paris"
    assert load_settings(None, environ={}).display.timezone == "Asia/Tokyo"
    monkeypatch.chdir(tmp_path / "cwd" / "..")
    (tmp_path / "settings.toml").unlink()
    assert load_settings(None, environ={}).display.timezone == "Asia/Shanghai"  # built-in default


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('[store]\ndata_dirr = "x"\n', "store.data_dirr", "unknown key"),
        ("[bogus]\nx = 1\n", "bogus", "unknown key"),
        ('[score]\nhalf_life = "6 hours"\n', "score.half_life", "not a duration"),
        ('[[sources]]\nid = "a"\nkind = "newsnow"\ninterval = "soon"\n', "sources[0](id=a).interval", "not a duration"),
        ('[[sources]]\nid = "a"\nkind = "nope"\n', "sources[0](id=a).kind", "newsnow"),
        (
            '[[sources]]\nid = "a"\nkind = "newsnow"\n[[sources]]\nid = "a"\nkind = "newsnow"\n',
            "sources[1].id",
            "duplicate source id",
        ),
        ('[[sources]]\nid = "Bad Id"\nkind = "newsnow"\n', "sources[0](id=Bad Id).id", "pattern"),
        ('[[sources]]\nid = "f"\nkind = "feed"\n', "sources[0](id=f)", "needs `url`"),
        ('[[sources]]\nid = "a"\nkind = "newsnow"\nweight = "heavy"\n', "sources[0](id=a).weight", "number"),
        ('[display]\ntimezone = "Mars/Olympus"\n', "display.timezone", "unknown time zone"),
        ('[store]\nurl = "mysql://u:pw@127.0.0.1/x"\n', "store.url", "unsupported database 'mysql'"),
        ('[store]\nurl = "not a url"\n', "store.url", "not a database URL"),
        ("not toml = = 1\n", "settings.toml", "not valid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(str(path), environ={})
    assert key in str(info.value)
    assert words in str(info.value)


def test_bad_env_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AGGREGATOR_STORE"):
        load_settings(None, environ={"AGGREGATOR_STORE": "x"})
    with pytest.raises(ConfigError, match=r"score\.nope: unknown key"):
        load_settings(None, environ={"AGGREGATOR_SCORE__NOPE": "1"})


def test_cli_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "data"
    path = write(
        tmp_path, f'[store]\ndata_dir = "{data_dir}"\n[[sources]]\nid = "a"\nkind = "newsnow"\ninterval = "fast"\n'
    )
    assert main(["--config", str(path), "run", "--once"]) == 2
    err = capsys.readouterr().err
    assert "sources[0](id=a).interval" in err
    assert not data_dir.exists()


def test_store_url_errors_do_not_echo_the_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(str(write(tmp_path, '[store]\nurl = "mysql://u:hunter2@127.0.0.1/x"\n')), environ={})
    assert "hunter2" not in str(info.value)
    url = "postgresql://u@127.0.0.1/x"
    assert load_settings(str(write(tmp_path, f'[store]\nurl = "{url}"\n')), environ={}).store.url == url


@pytest.mark.parametrize("command", [["top"], ["run", "--once"], ["sources"], ["db", "upgrade"]])
@pytest.mark.parametrize(
    ("data_dir", "words"),
    [("file", "exists and is not a directory"), ("file/sub", "cannot create the data directory")],
)
def test_unusable_data_dir_is_a_store_error_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], data_dir: str, words: str
) -> None:
    (tmp_path / "file").write_text("not a directory")
    path = write(
        tmp_path, f'[store]\ndata_dir = "{tmp_path / data_dir}"\n[[sources]]\nid = "zhihu"\nkind = "newsnow"\n'
    )
    assert main(["--config", str(path), *command]) == 2
    err = capsys.readouterr().err
    assert words in err and "[store] data_dir" in err
    assert "Traceback" not in err
    assert (tmp_path / "file").read_text() == "not a directory"


def test_a_directory_where_the_database_file_should_be_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data" / "aggregator.db").mkdir(parents=True)
    path = write(tmp_path, f'[store]\ndata_dir = "{tmp_path / "data"}"\n')
    assert main(["--config", str(path), "top"]) == 2
    assert "aggregator.db is a directory, not a SQLite database file" in capsys.readouterr().err


def test_missing_config_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "missing.toml"), "sources"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_shipped_settings_are_valid() -> None:
    settings = load_settings(str(REPO / "settings.toml"), environ={})
    kinds = [s.kind for s in settings.sources]
    assert kinds.count("newsnow") >= 8 and kinds.count("feed") >= 3
    ids = {s.id for s in settings.sources}
    assert {"weibo", "zhihu", "baidu", "toutiao", "douyin", "cls-telegraph", "wallstreetcn-hot", "thepaper"} <= ids
