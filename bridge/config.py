"""Reading the settings: the TOML file and BRIDGE_<SECTION>__<KEY> variables, checked once.

A problem becomes one ConfigError naming the key and where it came from (the file or a variable).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

import bridge.plugins  # noqa: F401  (registers the destinations: their sections are settings)
from bridge.destinations import settings_model
from bridge.errors import ConfigError
from bridge.settings import Settings, toml_data

DEFAULT_CONFIG = Path("settings.toml")
EXAMPLE_CONFIG = Path("settings.example.toml")


def resolve_config_path(named: str | None) -> tuple[Path, str | None]:
    """The settings file every command reads, and a note when it is the example file.

    --config, else $BRIDGE_CONFIG, else ./settings.toml, else ./settings.example.toml: the
    same order for `serve` and every operator command, so they all see one store and one token.
    """
    if named:
        return Path(named), None
    if env_path := os.environ.get("BRIDGE_CONFIG"):
        return Path(env_path), None
    if DEFAULT_CONFIG.is_file():
        return DEFAULT_CONFIG, None
    if EXAMPLE_CONFIG.is_file():
        return EXAMPLE_CONFIG, (f"no {DEFAULT_CONFIG} here, using {EXAMPLE_CONFIG} "
                                f"(copy it to {DEFAULT_CONFIG} to make it yours)")
    raise ConfigError(f"no settings file: found neither {DEFAULT_CONFIG} nor {EXAMPLE_CONFIG} "
                      f"in {Path.cwd()}; name one with --config FILE or BRIDGE_CONFIG")


def load_settings(named: str | None = None) -> Settings:
    """Read, merge and validate the settings, or raise ConfigError with one line per problem."""
    path, _ = resolve_config_path(named)
    if unknown := _unknown_variables(os.environ):
        raise ConfigError("unknown BRIDGE_ environment variables", unknown)
    data = _read_toml(path)
    model = settings_model()
    token = toml_data.set(data)
    try:
        return model()
    except ValidationError as exc:
        raise _invalid(exc, path, os.environ) from exc
    except SettingsError as exc:  # a BRIDGE_* value that does not parse; its text may be secret
        raise ConfigError(
            f"invalid BRIDGE_* variable: {exc}; lists and tables must be JSON, "
            """e.g. BRIDGE_WEBHOOKS__MESSAGES__TOKENS='["t1", "t2"]'""") from exc
    finally:
        toml_data.reset(token)


def _unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """BRIDGE_* names that match no section: pydantic-settings would ignore them silently."""
    sections = set(settings_model().model_fields)
    names = [name for name in environ
             if name.upper().startswith("BRIDGE_") and name.upper() != "BRIDGE_CONFIG"]
    return [f"{name}: unknown setting (expected BRIDGE_<SECTION>__<KEY>)" for name in names
            if name.upper().removeprefix("BRIDGE_").split("__")[0].lower() not in sections]


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc


def _invalid(exc: ValidationError, path: Path, environ: Mapping[str, str]) -> ConfigError:
    """One problem per line, each blamed on the variable that set it, else on the file."""
    problems: list[str] = []
    sources: dict[str, None] = {}
    for error in exc.errors():
        variable = _source_variable(error["loc"], environ)
        inside = [] if variable else _variables_inside(error["loc"], environ)
        # A table's own check (e.g. a url without credentials) weighs the file and the
        # variables that set keys of it together: name both.
        for source in [variable or str(path), *inside]:
            sources[source] = None
        blame = (f" (from {variable})" if variable
                 else f" (with {', '.join(inside)} from the environment)" if inside else "")
        problems.append(_describe(error) + blame)
    return ConfigError(f"invalid settings in {' and '.join(sources)}", problems)


def _variables_inside(location: tuple[int | str, ...], environ: Mapping[str, str]) -> list[str]:
    """The BRIDGE_* variables that set keys inside the table at `location`."""
    if not location:
        return []
    prefix = "BRIDGE_" + "__".join(str(part) for part in location).upper() + "__"
    return sorted(name for name in environ if name.upper().startswith(prefix))


def _source_variable(location: tuple[int | str, ...], environ: Mapping[str, str]) -> str | None:
    """The BRIDGE_* variable that set this key, or the table holding it, if one did."""
    variables = {name.upper(): name for name in environ}
    for end in range(len(location), 0, -1):
        wanted = "BRIDGE_" + "__".join(str(part) for part in location[:end]).upper()
        if wanted in variables:
            return variables[wanted]
    return None


def _describe(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{location}: unknown key"
    message = str(error["msg"]).removeprefix("Value error, ")
    if not location or message.startswith(f"{location}."):  # it names its key already
        return message
    return f"{location}: {message}"
