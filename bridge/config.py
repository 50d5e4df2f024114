"""Reading the settings: the TOML file and BRIDGE_<SECTION>__<KEY> variables, checked once.

A problem becomes one ConfigError naming the key and where it came from (the file or a variable).
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

import bridge.plugins  # noqa: F401  (registers the destinations: their sections are settings)
from bridge.destinations import settings_model
from bridge.environment import field_at, table_model, undecodable
from bridge.errors import ConfigError
from bridge.settings import Settings, toml_data

DEFAULT_CONFIG = Path("settings.toml")
EXAMPLE_CONFIG = Path("settings.example.toml")
# BRIDGE_* names that are not settings: the file to read, and the port compose publishes.
NOT_SETTINGS = frozenset({"BRIDGE_CONFIG", "BRIDGE_PORT"})


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
        raise _one_or_many("unknown BRIDGE_ environment variables", unknown)
    data = _read_toml(path)
    model = settings_model()
    if unreadable := undecodable(model, os.environ):
        raise _one_or_many("invalid BRIDGE_* variables", unreadable)
    token = toml_data.set(data)
    try:
        return model()
    except ValidationError as exc:
        raise _invalid(exc, path, os.environ) from exc
    except SettingsError as exc:  # a BRIDGE_* value that does not parse; its text may be secret
        raise ConfigError(
            f"invalid BRIDGE_* variable: {exc}; tables must be JSON, lists JSON or t1,t2, "
            """e.g. BRIDGE_WEBHOOKS__MESSAGES__TOKENS='["t1", "t2"]'""") from exc
    finally:
        toml_data.reset(token)


def _one_or_many(heading: str, problems: list[str]) -> ConfigError:
    """One problem is one line on its own; several come under a heading."""
    return ConfigError(problems[0]) if len(problems) == 1 else ConfigError(heading, problems)


def _unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """BRIDGE_* names that match no section: pydantic-settings would ignore them silently."""
    sections = list(settings_model().model_fields)
    names = [name for name in environ
             if name.upper().startswith("BRIDGE_") and name.upper() not in NOT_SETTINGS]
    return [f"{name}: unknown setting (expected BRIDGE_<SECTION>__<KEY>)"
            + _did_you_mean(_section_of(name), sections, _variable_in(name))
            for name in names if _section_of(name) not in sections]


def _section_of(variable: str) -> str:
    return variable.upper().removeprefix("BRIDGE_").split("__")[0].lower()


def _variable_in(variable: str) -> Callable[[str], str]:
    """The variable as it would be named in another section."""
    keys = variable.upper().removeprefix("BRIDGE_").split("__")[1:]
    return lambda section: "__".join([f"BRIDGE_{section.upper()}", *keys])


def _did_you_mean(word: str, known: list[str],
                  named: Callable[[str], str] = str) -> str:
    """"; did you mean …?" for the closest known name, or nothing when none is close."""
    close = difflib.get_close_matches(word.lower(), known, n=1)
    return f"; did you mean {named(close[0])}?" if close else ""


def _keys_beside(model: type[BaseModel], location: tuple[int | str, ...]) -> list[str]:
    """The keys the table holding `location` allows (list items are skipped over)."""
    path = [str(part) for part in location[:-1] if not isinstance(part, int)]
    if not path:
        return list(model.model_fields)
    field = field_at(model, path)
    table = table_model(field.annotation) if field is not None else None
    return list(table.model_fields) if table is not None else []


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
        return f"{location}: unknown key" + _did_you_mean(
            str(error["loc"][-1]), _keys_beside(settings_model(), error["loc"]))
    message = str(error["msg"]).removeprefix("Value error, ")
    if not location or message.startswith(f"{location}."):  # it names its key already
        return message
    return f"{location}: {message}"
