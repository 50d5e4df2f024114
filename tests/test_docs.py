"""The docs match the code: every setting is in the reference, every command they show exists."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
from pydantic import BaseModel

from bridge.cli import COMMANDS, build_parser
from bridge.destinations import REGISTRY, settings_model, template_folders

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFIGURATION = ROOT / "docs" / "configuration.md"
CODE = re.compile(r"```[^\n]*\n(.*?)```|`([^`\n]+)`", re.S)
HEADING = re.compile(r"^#{2,4} (.*\[.*)$")
KEY_ROW = re.compile(r"^\| `(\w+)` \|")
OPERATOR_COMMANDS = ("check", "render", "send-test", "deliveries", "retry", "conversations",
                     "backup", "pause", "resume")


def setting_keys(model: type[BaseModel] | None = None, prefix: str = "",
                 free: bool = False) -> set[str]:
    """Every key a settings file can hold, as `section.key` (tables of free keys count once).

    The model is the registry's: the general sections and every destination's. With `free`,
    only the tables of free keys (e.g. a CRM's property map).
    """
    keys: set[str] = set()
    for name, field in (model or settings_model()).model_fields.items():
        annotation = field.annotation
        if annotation is not None and getattr(annotation, "__origin__", None) is list:
            annotation = annotation.__args__[0]  # [[chatbots]]: a list of tables
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= setting_keys(annotation, f"{prefix}{name}.", free)
        elif not free or getattr(annotation, "__origin__", None) is dict:
            keys.add(f"{prefix}{name}")
    return keys


def example_file_keys() -> set[str]:
    """Every key settings.example.toml sets or shows commented out, as `section.key`."""
    keys, section = set(), ""
    free_tables = setting_keys(free=True)
    for line in (ROOT / "settings.example.toml").read_text().splitlines():
        if header := re.match(r"^#?\s*\[\[?([\w.]+)\]\]?\s*$", line):
            section = header[1]
            if section in free_tables:
                keys.add(section)
        elif (key := re.match(r"^#?\s?(\w+) = ", line)) and section not in free_tables:
            keys.add(f"{section}.{key[1]}")
    return keys


def documented_keys() -> set[str]:
    """`section.key` for each key row under each `### [section]` heading of the reference."""
    keys: set[str] = set()
    sections: list[str] = []
    for line in CONFIGURATION.read_text().splitlines():
        if heading := HEADING.match(line):
            sections = re.findall(r"\[\[?([\w.]+)\]\]?", heading[1])
        elif row := KEY_ROW.match(line):
            keys |= {f"{section}.{row[1]}" for section in sections}
    return keys


def test_every_setting_is_in_the_configuration_reference():
    assert setting_keys() - documented_keys() == set()


def test_the_reference_documents_no_setting_that_does_not_exist():
    assert documented_keys() - setting_keys() == set()


def test_every_key_of_the_example_file_is_a_setting_and_documented():
    keys = example_file_keys()
    assert len(keys) > 50
    assert keys - setting_keys() == set()
    assert keys - documented_keys() == set()


def code_lines() -> list[tuple[str, str]]:
    """(page, line) for every line of code, in blocks and inline, of every doc page."""
    found = []
    for page in DOCS:
        for block, inline in CODE.findall(page.read_text()):
            found += [(page.name, line) for line in (block or inline).splitlines()]
    return found


def shown_commands() -> list[tuple[str, list[str]]]:
    """(page, words after `sitegpt-bridge`) for every command the docs show."""
    shown = []
    for page, line in code_lines():
        for match in re.finditer(r"sitegpt-bridge ([a-z][\w-]*(?: [^|#`]*)?)", line):
            shown.append((page, shlex.split(match[1].replace("...", ""), comments=True)))
    return shown


def test_the_docs_show_commands():
    assert {words[0] for _, words in shown_commands()} >= set(OPERATOR_COMMANDS)


@pytest.mark.parametrize(("page", "words"), shown_commands(),
                         ids=lambda value: value if isinstance(value, str) else " ".join(value))
def test_every_command_in_the_docs_exists_with_its_options(page, words):
    name = words[0]
    assert name in COMMANDS, f"{page}: sitegpt-bridge {name} is no command"
    subcommand = build_parser()._subparsers._group_actions[0].choices[name]
    options = {option for action in subcommand._actions for option in action.option_strings}
    flags = [word.strip("[]").split("=")[0] for word in words[1:]
             if word.strip("[").startswith("--")]
    assert set(flags) <= options, f"{page}: {' '.join(words)}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_answers_help(name, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([name, "--help"])
    assert done.value.code == 0
    assert f"usage: sitegpt-bridge {name}" in capsys.readouterr().out


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    listed = re.search(r"^OPERATOR_COMMANDS := (.*)$", text, re.M)
    assert listed
    return set(re.findall(r"^([\w-]+):", text, re.M)) | set(listed[1].split())


def test_every_make_command_in_the_docs_exists():
    shown = {match[1] for _, line in code_lines()
             if (match := re.match(r"(?:\$ )?make ([a-z][\w-]*)", line.strip()))}
    assert {"run", "test", "check", "send-test"} <= shown
    assert shown - make_targets() == set()


def test_every_operator_command_has_a_make_shortcut():
    assert set(OPERATOR_COMMANDS) <= set(COMMANDS)
    assert set(OPERATOR_COMMANDS) <= make_targets()


def dry_run(*target: str) -> str:
    done = subprocess.run(["make", "-n", "-s", "-C", str(ROOT), *target], capture_output=True,
                          text=True, timeout=60, check=True)
    return done.stdout.splitlines()[-1]


def test_make_run_lets_the_command_find_its_settings():
    assert dry_run("run").split() == [".venv/bin/sitegpt-bridge", "serve"]
    assert dry_run("run", "CONFIG=mine.toml").split()[1:] == ["serve", "--config", "mine.toml"]
    assert dry_run("send-test").split()[1:] == ["send-test", "messages"]
    assert dry_run("deliveries", "ARGS=--status failed").split()[1:] == [
        "deliveries", "--status", "failed"]


def test_the_readme_is_one_screen_with_the_manual_in_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "make run" in readme and "make test" in readme and "curl -X POST" in readme
    pages = {plugin.docs for plugin in REGISTRY.values() if plugin.docs}
    assert pages
    for page in ("deploy", "configuration", *sorted(pages), "templates", "operations",
                 "troubleshooting", "architecture"):
        assert f"(docs/{page}.md)" in readme
        assert (ROOT / "docs" / f"{page}.md").is_file()
    assert "(bench/README.md)" in readme


def test_the_deploy_page_says_how_podman_keeps_the_healthcheck():
    assert "podman build --format docker" in (ROOT / "docs" / "deploy.md").read_text()


def test_every_template_is_documented() -> None:
    """A template users cannot find in the docs is one they cannot override."""
    docs = "\n".join(page.read_text() for page in (ROOT / "docs").glob("*.md"))
    templates = sorted(f"{prefix}/{path.relative_to(folder).as_posix()}"
                       for prefix, folder in template_folders().items()
                       for path in folder.rglob("*.j2"))
    assert templates
    undocumented = [name for name in templates if name not in docs]
    assert undocumented == []


def test_every_metric_is_documented() -> None:
    from bridge.destinations import with_plugin_metrics
    from bridge.metrics import Metrics

    documented = (ROOT / "docs" / "operations.md").read_text()
    families = [family.name for family in with_plugin_metrics(Metrics()).registry.collect()
                if family.name.startswith("sitegpt_bridge_")]
    assert families
    missing = [name for name in families if f"`{name}" not in documented]
    assert missing == []


def test_the_delivery_page_lists_every_schema_version_and_shows_the_current_one() -> None:
    from bridge.store.migrations import SCHEMA_VERSION, VERSIONS

    page = (ROOT / "docs" / "delivery.md").read_text()
    listed = [int(number) for number in re.findall(r"^\| (\d+) \|", page, re.MULTILINE)]
    assert listed == sorted(VERSIONS)
    shown = re.findall(r"schema version (?:1 to )?(\d+)", page)
    assert shown and set(shown) == {str(SCHEMA_VERSION)}


def test_every_bundled_sample_is_named_where_render_is_documented() -> None:
    from bridge.commands import BATCH_SAMPLE
    from bridge.samples import sample_names

    render = (ROOT / "docs" / "operations.md").read_text().split("### render", 1)[1]
    render = render.split("\n### ", 1)[0]
    missing = [name for name in [*sample_names(), BATCH_SAMPLE] if f"`{name}`" not in render]
    assert missing == []


def test_every_webhook_outcome_is_counted_from_the_start_and_documented() -> None:
    from bridge.inbound import REASONS
    from bridge.metrics import WEBHOOK_OUTCOMES

    assert {reason.outcome for reason in REASONS} <= set(WEBHOOK_OUTCOMES)
    documented = (ROOT / "docs" / "operations.md").read_text()
    row = next(line for line in documented.splitlines()
               if "`sitegpt_bridge_webhooks_total`" in line)
    assert [name for name in WEBHOOK_OUTCOMES if f"`{name}`" not in row] == []
