"""BRIDGE_* values: lists as JSON or words with commas, tables as JSON, any of them in quotes.

An env file read by podman (or a shell that quoted twice) keeps the quotes around a value:
`"t1"` or `'["t1"]'` arrive with them. One pair of matching outer quotes is taken off every
BRIDGE_* value, as docker's env file reader does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource

QUOTES = ("'", '"')
LIST_HINT = """write JSON, e.g. '["t1", "t2"]', or words separated by commas: t1,t2"""
TABLE_HINT = """write JSON, e.g. '[{"id": "bot1"}]'"""


class NotDecodable(ValueError):
    """A variable's value is not what its setting holds; the text says what to write."""


def unquoted(value: str) -> str:
    """The value without one pair of matching outer quotes, if it has them."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in QUOTES:
        return value[1:-1]
    return value


def _bare(annotation: Any) -> Any:
    """The type under Annotated[...] and Optional[...]."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) is Union:
        kinds = [kind for kind in get_args(annotation) if kind is not type(None)]
        annotation = kinds[0] if len(kinds) == 1 else annotation
    return annotation


def holds_words(annotation: Any) -> bool:
    """A list of strings (or secrets): the kind a comma list can stand for."""
    annotation = _bare(annotation)
    if get_origin(annotation) is not list:
        return False
    [item] = get_args(annotation) or [Any]
    return _bare(item) in (str, SecretStr)


def decode(value: str, annotation: Any) -> Any:
    """The value of a list or table setting, or NotDecodable saying what to write instead."""
    for text in dict.fromkeys([value, unquoted(value)]):
        try:
            decoded = json.loads(text)
        except ValueError:
            continue
        if not isinstance(decoded, str):
            return decoded
    if holds_words(annotation):
        words = unquoted(unquoted(value).strip())
        return [word.strip() for word in words.split(",") if word.strip()]
    raise NotDecodable(f"not JSON: {TABLE_HINT}" if not holds_words(annotation)
                       else f"not a list: {LIST_HINT}")


def table_model(annotation: Any) -> type[BaseModel] | None:
    """The settings table a field holds, itself or as the items of its list."""
    annotation = _bare(annotation)
    if get_origin(annotation) is list:
        annotation = _bare((get_args(annotation) or [Any])[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def field_at(model: type[BaseModel], path: list[str]) -> FieldInfo | None:
    """The field a BRIDGE_<SECTION>__<KEY> path names, or None (an unknown key)."""
    field: FieldInfo | None = None
    table: type[BaseModel] | None = model
    for part in path:
        fields = table.model_fields if table is not None else {}
        field = next((info for name, info in fields.items() if name.lower() == part.lower()),
                     None)
        if field is None:
            return None
        table = table_model(field.annotation)
    return field


def undecodable(model: type[BaseModel], environ: Mapping[str, str]) -> list[str]:
    """One line per BRIDGE_* list or table variable whose value cannot be read."""
    problems = []
    for name, value in environ.items():
        if not name.upper().startswith("BRIDGE_") or not value:
            continue
        field = field_at(model, name[len("BRIDGE_"):].split("__"))
        if field is None or not _is_complex(field.annotation):
            continue
        try:
            decode(value, field.annotation)
        except NotDecodable as exc:
            problems.append(f"{name}: {exc}")
    return problems


def _is_complex(annotation: Any) -> bool:
    annotation = _bare(annotation)
    origin = get_origin(annotation) or annotation
    return origin in (list, dict) or (isinstance(origin, type) and issubclass(origin, BaseModel))


class BridgeEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source: values unquoted, lists read as `decode` does."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self.env_vars = {name: unquoted(value) if value else value
                         for name, value in self.env_vars.items()}

    def decode_complex_value(self, field_name: str, field: FieldInfo | None, value: Any) -> Any:
        if not isinstance(value, str):
            return super().decode_complex_value(field_name, field, value)  # type: ignore[arg-type]
        return decode(value, field.annotation if field is not None else None)
