"""The Dockerfile, compose file, Caddyfile and .env.example agree with the code they run.

No Docker engine runs here, so these read the files and check each claim against the code: the
port, the health path, the command, the volume, the config path, every BRIDGE_* name.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
import yaml
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from bridge.app import create_app, open_bridge
from bridge.cli import COMMANDS, build_parser, server_config
from bridge.config import load_settings
from bridge.destinations import settings_model
from bridge.errors import ConfigError
from bridge.sections import ServerSettings

ROOT = Path(__file__).resolve().parent.parent
ENV_LINE = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$")
NO_PROXY_ENV = {key: value for key, value in os.environ.items()
                if "proxy" not in key.lower() and not key.startswith("BRIDGE_")}


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    pairs = [line.split(None, 1) for line in lines if line and not line.startswith("#")]
    return [(pair[0].upper(), pair[1] if len(pair) > 1 else "") for pair in pairs]


def instruction(name: str) -> list[str]:
    return [args for keyword, args in dockerfile() if keyword == name]


def image_env() -> dict[str, str]:
    return dict(item.split("=", 1) for args in instruction("ENV") for item in shlex.split(args))


def image_command() -> list[str]:
    return json.loads(instruction("CMD")[-1])


def healthcheck_command() -> list[str]:
    _, _, command = instruction("HEALTHCHECK")[-1].partition("CMD ")
    return json.loads(command)


def healthcheck_url() -> tuple[int, str]:
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/-]*)", " ".join(healthcheck_command()))
    assert match, "the healthcheck must ask the bridge on 127.0.0.1"
    return int(match[1]), match[2]


def copied_sources() -> list[str]:
    return [source for args in instruction("COPY") for source in shlex.split(args)[:-1]]


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def env_example() -> dict[str, str]:
    """Every NAME=value of .env.example, the commented-out ones too, quotes removed."""
    found = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if match := ENV_LINE.match(line.strip()):
            value = match[2].strip()
            found[match[1]] = value[1:-1] if value[:1] == value[-1:] == "'" else value
    return found


def default_port() -> int:
    return ServerSettings().port


def bridge_service() -> dict[str, Any]:
    return compose()["services"]["bridge"]


# The image


def test_the_image_is_python_311_slim_and_runs_as_an_unprivileged_user():
    assert instruction("FROM") == ["python:3.11-slim"]
    user = instruction("USER")[-1]
    assert user not in ("root", "0")
    assert any("useradd" in run and user in run.split() for run in instruction("RUN"))
    assert any(f"chown {user}:{user} {instruction('VOLUME')[-1]}" in run
               for run in instruction("RUN"))


def test_the_image_installs_the_package_from_the_repo():
    runs = " ".join(instruction("RUN"))
    assert "pip install ." in runs
    for source in copied_sources():
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repo"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    forced = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert set(forced) <= set(copied_sources()), "the wheel needs these folders in the image"


def test_the_image_settings_load_and_point_the_store_into_the_volume(monkeypatch):
    env = image_env()
    for name, value in env.items():
        if name != "BRIDGE_CONFIG":
            monkeypatch.setenv(name, value)
    settings = load_settings(str(ROOT / "settings.example.toml"))  # what the README mounts
    volume = PurePosixPath(instruction("VOLUME")[-1])
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == default_port() == int(instruction("EXPOSE")[-1])
    assert PurePosixPath(settings.store.sqlite_path).is_relative_to(volume)
    assert PurePosixPath(env["BRIDGE_CONFIG"]).is_absolute()


def test_the_image_runs_a_real_subcommand():
    command = image_command()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert command[0] in scripts
    assert command[1] in COMMANDS
    assert build_parser().parse_args(command[1:]).func is COMMANDS[command[1]][1]


@contextlib.contextmanager
def serving(app: Any, server: ServerSettings) -> Iterator[int]:
    """Run `app` the way `serve` does, in a thread, on a free port of 127.0.0.1."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    runner = uvicorn.Server(server_config(app, server))
    thread = threading.Thread(target=runner.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):
        if runner.started or not thread.is_alive():
            break
        time.sleep(0.01)
    assert runner.started, "uvicorn did not start"
    try:
        yield sock.getsockname()[1]
    finally:
        runner.should_exit = True
        thread.join(10)
        sock.close()


def run_healthcheck(port: int) -> int:
    """The image's HEALTHCHECK command, run here against `port`."""
    image_port, _ = healthcheck_url()
    program, *args = healthcheck_command()
    assert program == "python"
    args = [arg.replace(f":{image_port}/", f":{port}/") for arg in args]
    return subprocess.run([sys.executable, *args], env=NO_PROXY_ENV, capture_output=True,
                          timeout=30).returncode


def test_the_healthcheck_passes_against_the_running_bridge_and_fails_without_it(make_settings):
    port, path = healthcheck_url()
    assert port == default_port()
    assert "--interval" in instruction("HEALTHCHECK")[-1]
    app = create_app(open_bridge(make_settings()), run_worker=False)
    with serving(app, ServerSettings()) as live_port:
        assert httpx.Client(trust_env=False).get(f"http://127.0.0.1:{live_port}{path}").is_success
        assert run_healthcheck(live_port) == 0
    assert run_healthcheck(live_port) != 0


# Behind a reverse proxy


async def client_host(request: Request) -> PlainTextResponse:
    assert request.client is not None
    return PlainTextResponse(request.client.host)


@pytest.mark.parametrize(("trusted", "seen"), [
    (["127.0.0.1"], "203.0.113.7"),
    (["127.0.0.0/8"], "203.0.113.7"),
    (["192.0.2.10"], "127.0.0.1"),
    ([], "127.0.0.1"),
])
def test_forwarded_for_is_honoured_only_from_forwarded_allow_ips(trusted, seen):
    probe = Starlette(routes=[Route("/", client_host)])
    with serving(probe, ServerSettings(forwarded_allow_ips=trusted)) as port:
        answer = httpx.Client(trust_env=False).get(
            f"http://127.0.0.1:{port}/", headers={"X-Forwarded-For": "203.0.113.7"})
    assert answer.text == seen


# docker-compose.yml


def test_compose_runs_the_image_with_its_volume_settings_and_env_file():
    bridge = bridge_service()
    assert bridge["build"] == "."
    assert bridge["restart"] == "unless-stopped"
    assert bridge["env_file"] == [{"path": ".env", "required": False}]
    volume = instruction("VOLUME")[-1]
    named = [entry for entry in bridge["volumes"] if isinstance(entry, str)
             and entry.split(":")[1] == volume]
    assert named and named[0].split(":")[0] in compose()["volumes"]
    settings_mount = next(entry for entry in bridge["volumes"] if isinstance(entry, dict))
    assert settings_mount == {"type": "bind", "source": "./settings.toml",
                              "target": image_env()["BRIDGE_CONFIG"], "read_only": True}


def test_compose_requires_no_variable_so_it_validates_without_env():
    required = re.findall(r"\$\{(\w+):?\?", (ROOT / "docker-compose.yml").read_text())
    assert required == []


def caddy_start(environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Caddy's start-up command as compose runs it, with `caddy` itself stubbed by `echo`."""
    shell, flag, script = compose()["services"]["caddy"]["command"]
    script = script.replace("$$", "$").replace("exec caddy", "exec echo caddy")
    return subprocess.run([shell, flag, script], env=environ, capture_output=True, text=True,
                          timeout=30, check=False)


def test_caddy_alone_refuses_to_start_without_a_domain():
    refused = caddy_start({"PATH": os.environ["PATH"], "DOMAIN": ""})
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "caddy: set DOMAIN in .env to the public name of this server")
    started = caddy_start({"PATH": os.environ["PATH"], "DOMAIN": "bridge.example.com"})
    assert (started.returncode, started.stdout.split()[:2]) == (0, ["caddy", "run"])


def interpolated(text: str, environ: dict[str, str]) -> str:
    """Compose's ${NAME:-default}, as it reads .env and the shell's variables."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda match: environ.get(match[1]) or match[2], text)


@pytest.mark.parametrize(("environ", "port"), [({}, 8080), ({"BRIDGE_PORT": "9090"}, 9090)])
def test_compose_publishes_the_bridge_port_on_this_machine_only(environ, port):
    (published,) = bridge_service()["ports"]
    host, host_port, container_port = interpolated(published, environ).split(":")
    assert host == "127.0.0.1"
    assert int(container_port) == default_port()
    assert int(host_port) == port


def test_bridge_port_in_env_is_for_compose_and_no_unknown_setting(monkeypatch):
    assert env_example()["BRIDGE_PORT"] == str(default_port())
    monkeypatch.setenv("BRIDGE_PORT", "9090")  # .env reaches the container as well
    assert load_settings(str(ROOT / "settings.example.toml")).server.port == default_port()


def test_compose_states_the_compose_version_its_file_needs():
    header = (ROOT / "docker-compose.yml").read_text().split("services:")[0]
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    for needed in ("Docker Compose 2.24", "podman-compose 1.2"):
        assert needed in header and needed in deploy
    assert bridge_service()["env_file"][0]["required"] is False  # the form 2.24 brought


def test_every_container_log_is_rotated():
    for name, service in compose()["services"].items():
        logging = service["logging"]
        assert logging["driver"] == "json-file", name
        assert logging["options"] == {"max-size": "10m", "max-file": "3"}, name


def test_the_bridge_believes_caddys_forwarded_for_from_the_compose_network(monkeypatch):
    [variable] = bridge_service()["environment"].items()
    monkeypatch.setenv(*variable)
    trusted = load_settings(str(ROOT / "settings.example.toml")).server.forwarded_allow_ips
    assert trusted == ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
    probe = Starlette(routes=[Route("/", client_host)])
    with serving(probe, ServerSettings(forwarded_allow_ips=trusted)) as port:
        answer = httpx.Client(trust_env=False).get(
            f"http://127.0.0.1:{port}/", headers={"X-Forwarded-For": "203.0.113.7"})
    assert answer.text == "127.0.0.1"  # this machine is no proxy: its header is not believed


def test_compose_puts_caddy_in_front_under_the_https_profile():
    caddy = compose()["services"]["caddy"]
    assert caddy["profiles"] == ["https"]
    assert caddy["restart"] == "unless-stopped"
    assert {"80:80", "443:443"} <= set(caddy["ports"])
    assert "./Caddyfile:/etc/caddy/Caddyfile:ro" in caddy["volumes"]
    assert caddy["environment"]["DOMAIN"].startswith("${DOMAIN")
    assert caddy["depends_on"]["bridge"]["condition"] == "service_healthy"
    assert "DOMAIN" in env_example()


def test_every_bridge_variable_of_compose_is_a_real_setting(monkeypatch, tmp_path):
    for service in compose()["services"].values():
        for name, value in (service.get("environment") or {}).items():
            if name.startswith("BRIDGE_"):
                monkeypatch.setenv(name, str(value))
    load_settings(str(ROOT / "settings.example.toml"))


# Caddyfile


def caddyfile() -> list[str]:
    text = (ROOT / "Caddyfile").read_text()
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_caddy_serves_the_domain_and_proxies_to_the_bridge_service():
    lines = caddyfile()
    assert lines[0] == "{$DOMAIN} {"
    (proxy,) = [line for line in lines if line.startswith("reverse_proxy")]
    host, port = proxy.split()[1].split(":")
    assert host in compose()["services"] and host == "bridge"
    assert int(port) == default_port()


def test_caddy_keeps_metrics_off_the_internet():
    lines = caddyfile()
    matcher = next(line for line in lines if line.startswith("@metrics"))
    assert "/metrics" in matcher.split()
    assert "respond @metrics 404" in lines
    assert lines.index("respond @metrics 404") < lines.index(
        next(line for line in lines if line.startswith("reverse_proxy")))


# .env.example and .dockerignore


def secret_variables(model: type[BaseModel], prefix: str = "BRIDGE_") -> set[str]:
    """The variable of every secret setting (lists of tables cannot be set one by one)."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        variable = f"{prefix}{name.upper()}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= secret_variables(annotation, f"{variable}__")
        elif "SecretStr" in str(annotation):
            names.add(variable)
    return names


def test_every_bridge_variable_of_env_example_loads_as_settings(monkeypatch, tmp_path):
    variables = {name: value for name, value in env_example().items()
                 if name.startswith("BRIDGE_")}
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "settings.toml"
    config.write_text('[slack]\nchannel = "C0123456789"\n')  # what the bot token needs
    settings = load_settings(str(config))
    assert settings.webhooks.messages.tokens == []  # a fresh copy keeps the webhooks shut
    assert settings.slack.bot_token is not None and settings.crm.webhook.headers


def test_env_example_reads_the_same_for_docker_and_podman():
    """podman's --env-file keeps quotes and spaces that compose's parser takes away."""
    for line in (ROOT / ".env.example").read_text().splitlines():
        if match := ENV_LINE.match(line.strip()):
            value = match[2]
            assert value == value.strip() and value[:1] not in "'\"", line
            assert "$" not in value and " #" not in value, line


def test_env_example_documents_every_secret_setting():
    missing = secret_variables(settings_model()) - set(env_example())
    assert missing == set()


def test_a_misspelt_bridge_variable_is_an_error_not_ignored(monkeypatch):
    monkeypatch.setenv("BRIDGE_SLAK__BOT_TOKEN", "xoxb-typo")
    with pytest.raises(ConfigError) as error:
        load_settings(str(ROOT / "settings.example.toml"))
    assert error.value.problems == [
        "BRIDGE_SLAK__BOT_TOKEN: unknown setting (expected BRIDGE_<SECTION>__<KEY>); "
        "did you mean BRIDGE_SLACK__BOT_TOKEN?"]


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_keeps_secrets_out_and_the_sources_in():
    patterns = dockerignore()
    assert {".env", "settings.toml", "data", ".venv", ".git"} <= set(patterns)
    for source in copied_sources():
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in patterns), source


# The package, built the way the image builds it


@pytest.mark.skipif(os.environ.get("SKIP_WHEEL_BUILD") == "1", reason="SKIP_WHEEL_BUILD=1")
def test_the_wheel_built_from_the_image_sources_carries_templates_and_samples(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in copied_sources():  # exactly what the Dockerfile copies, nothing else
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", ".", "-w", str(tmp_path / "dist")],
        cwd=source, check=True, capture_output=True, timeout=120)
    (wheel,) = (tmp_path / "dist").glob("sitegpt_bridge-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(name).decode() for name in names
                            if name.endswith("entry_points.txt"))
    templates = [path.relative_to(ROOT / "templates").as_posix()
                 for path in (ROOT / "templates").rglob("*") if path.is_file()]
    assert {f"bridge/templates/{name}" for name in templates} <= names
    samples = [path.name for path in (ROOT / "bridge" / "samples").glob("*.json")]
    assert samples and {f"bridge/samples/{name}" for name in samples} <= names
    assert "sitegpt-bridge = bridge.cli:main" in entry_points


# The postgres profile


def postgres_service() -> dict[str, Any]:
    return compose()["services"]["postgres"]


def test_the_postgres_profile_runs_the_official_image_with_a_volume_and_no_open_port():
    postgres = postgres_service()
    assert postgres["profiles"] == ["postgres"]
    assert re.fullmatch(r"postgres:\d+", postgres["image"]), "the official image, a major pinned"
    assert postgres["restart"] == "unless-stopped"
    assert "ports" not in postgres
    (volume,) = postgres["volumes"]
    name, target = volume.split(":")
    assert target == "/var/lib/postgresql/data" and name in compose()["volumes"]


def test_the_postgres_healthcheck_asks_the_database_the_bridge_uses():
    postgres = postgres_service()
    program, *args = postgres["healthcheck"]["test"][1:]
    assert postgres["healthcheck"]["test"][0] == "CMD" and program == "pg_isready"
    environment = postgres["environment"]
    assert f"--username={environment['POSTGRES_USER']}" in args
    assert f"--dbname={environment['POSTGRES_DB']}" in args


def test_the_bridge_starts_once_postgres_is_healthy_and_without_the_profile_too():
    dependency = bridge_service()["depends_on"]["postgres"]
    assert dependency == {"condition": "service_healthy", "required": False}


def test_env_example_points_the_store_at_the_postgres_service_with_its_password():
    env = env_example()
    environment = postgres_service()["environment"]
    assert environment["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD")
    url = urlsplit(env["BRIDGE_STORE__URL"])
    assert (url.scheme, url.hostname, url.port) == ("postgresql", "postgres", 5432)
    assert url.username == environment["POSTGRES_USER"]
    assert url.path == f"/{environment['POSTGRES_DB']}"
    assert url.password == env["POSTGRES_PASSWORD"]
