"""MkDocs hook: the reference pages of the commands and of the pipeline's YAML keys, generated at
build time from what generates the command line and the YAML themselves (the CLI's ``COMMANDS``
table and its argument parser, the settings dataclasses, the pipeline's ``SECTIONS``), so that a
new command, option or key appears in the docs without an edit here, and a removed one leaves them.

Hand-written notes join the generated text: ``snippets/commands/NAME.md`` after a command's
options, ``snippets/pipeline.md`` before the pipeline's sections. Their links are written as
from the page they join (``reference/commands/NAME.md``, ``reference/pipeline.md``).
"""

from __future__ import annotations

import dataclasses
import shlex
import typing
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

from tinybert.cli import COMMANDS, EXAMPLES, REFERENCE_MEANINGS, build_parser
from tinybert.data import DataOptions
from tinybert.pipeline import SECTIONS
from tinybert.settings import Setting, flag_of, given_values, settings_of, values_of

COMMANDS_DIR = "reference/commands"
COMMANDS_INDEX = f"{COMMANDS_DIR}/index.md"
PIPELINE_PAGE = "reference/pipeline.md"
SNIPPETS = Path(__file__).resolve().parents[1] / "snippets"
KINDS = {int: "whole number", float: "number", str: "text", list: "one or more values"}
STAGE_KEY = "stage"  # distillation's defaults depend on it


def on_config(config):
    """The nav's entry for the commands' index becomes a section listing every command."""
    config["nav"] = _with_commands(config["nav"])
    return config


def _with_commands(nav):
    if isinstance(nav, list):
        return [_with_commands(item) for item in nav]
    if isinstance(nav, dict):
        return {title: ([COMMANDS_INDEX] + [{f"tinybert {name}": f"{COMMANDS_DIR}/{name}.md"} for name in COMMANDS]
                        if value == COMMANDS_INDEX else _with_commands(value)) for title, value in nav.items()}
    return nav


def on_files(files, config):
    missing = [name for name in COMMANDS if name not in EXAMPLES]
    if missing:
        raise PluginError(f"tinybert {missing[0]} has no example: add one to tinybert.cli.EXAMPLES")
    pages = {COMMANDS_INDEX: commands_index(), PIPELINE_PAGE: pipeline_page()}
    pages.update({f"{COMMANDS_DIR}/{name}.md": command_page(name) for name in COMMANDS})
    for uri, text in pages.items():
        files.append(File.generated(config, uri, content=text))
    return files


def _snippet(relative: str) -> str:
    path = SNIPPETS / relative
    return "\n" + path.read_text(encoding="utf-8") if path.is_file() else ""


def _cell(text: str) -> str:
    """Text as one Markdown table cell (a bar ends a cell, a star starts emphasis)."""
    return (text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("<", "&lt;")
            .replace("\n", " "))


def _shown(value) -> str:
    if value in ("on", "off"):
        return value
    if isinstance(value, list):
        return " ".join(f"`{item}`" for item in value) or "none"
    return "–" if value is None else f"`{value}`"


def _default(setting: Setting, defaults: list[dict]) -> str:
    """The default a user gets: one value, or one per distillation stage where they differ."""
    if setting.required:
        return "required"
    values = [values[setting.key] for values in defaults]
    if setting.kind is bool:
        values = ["on" if value else "off" for value in values]
    if len({repr(value) for value in values}) == 1 or setting.key == STAGE_KEY:
        return _shown(values[0])
    return ", ".join(f"{_shown(value)} ({values[STAGE_KEY]})" for value, values in zip(values, defaults))


def _value(setting: Setting) -> str:
    if setting.kind is bool:
        return "switch"
    if setting.choices:
        return "one of " + ", ".join(f"`{choice}`" for choice in setting.choices)
    kind = KINDS.get(setting.kind, setting.kind.__name__)
    return kind + (", repeatable" if setting.repeat else "")


def _spellings(setting: Setting) -> list[str]:
    if setting.positional:
        return [setting.key.upper()]
    return list(dict.fromkeys([flag_of(setting.key), *setting.flags]))


def _options_table(settings: list[Setting], defaults: list[dict]) -> list[str]:
    lines = ['<div class="options" markdown>', "", "| option | value | default | what it sets |", "|---|---|---|---|"]
    for setting in settings:
        first, *others = _spellings(setting)
        option = f'<span id="{first}"></span>`{first}`' + "".join(f"<br>`{other}`" for other in others)
        meaning = setting.help or "the reference code's spelling of " + REFERENCE_MEANINGS.get(first, "nothing")
        lines.append(f"| {option} | {_value(setting)} | {_default(setting, defaults)} | {_cell(meaning)} |")
    return lines + ["", "</div>"]


def _grouped(settings: list[Setting]) -> dict[str | None, list[Setting]]:
    groups: dict[str | None, list[Setting]] = {}
    for setting in settings:
        groups.setdefault(setting.group, []).append(setting)
    return groups


def _kinds_within(kind) -> set:
    """``kind`` and the dataclass types of its fields, nested."""
    found = {kind}
    for field in dataclasses.fields(kind):
        annotation = typing.get_type_hints(kind)[field.name]
        for candidate in typing.get_args(annotation) or (annotation,):
            if dataclasses.is_dataclass(candidate):
                found |= _kinds_within(candidate)
    return found


def _sections_of(kind) -> list[str]:
    """The pipeline sections whose keys are the settings of the arguments dataclass ``kind``."""
    return [name for name, section in SECTIONS.items() if name and kind in _kinds_within(section.kind)]


def command_page(name: str) -> str:
    kind, defaults, extras, help_text, description = COMMANDS[name]
    defaults = [values_of(instance) for instance in (defaults if isinstance(defaults, list) else [defaults])]
    lines = [f"# tinybert {name}", "", description or help_text[0].upper() + help_text[1:] + ".", "",
             "```bash", EXAMPLES[name], "```", "", "## Options", ""]
    for title, settings in _grouped(settings_of(kind)).items():
        if title:
            lines += [f"### {title}", ""]
        lines += _options_table(settings, defaults) + [""]
    for title, extra in extras:
        lines += [f"### {title}", ""] + _options_table(settings_of(extra), [values_of(extra())]) + [""]
    sections = _sections_of(kind)
    where = (" In a pipeline config they are the keys of the " + ", ".join(f"[`{s}:`](../pipeline.md#{s})"
                                                                          for s in sections) + " section(s)."
             if sections else "")
    lines += ["## From Python", "",
              f"The options are the fields of `{kind.__module__}.{kind.__name__}` (groups of them are dataclasses "
              f"of their own), and the command runs its `run()`. `tinybert.settings.with_values` sets any of them "
              f"by its key, the option's name with `_` for `-` (`max_length` for `--max-length`).{where} The "
              f"example above, from Python:", ""]
    lines += ["```python", f"from {kind.__module__} import {kind.__name__}", "from tinybert.settings import with_values",
              "", f"with_values({kind.__name__}(), {_example_values(name)!r}).run()", "```", ""]
    return "\n".join(lines) + _snippet(f"commands/{name}.md")


def _example_values(name: str) -> dict:
    """The settings the command's example gives, by key."""
    words = shlex.split(EXAMPLES[name].split("|")[-1])[1:]  # after `tinybert`
    return given_values(build_parser().parse_args(words), settings_of(COMMANDS[name][0]))


def commands_index() -> str:
    lines = ["# Commands", "",
             "Every command prints progress, stops on bad input with one message naming the file, the line and "
             "the fix (exit code 2, no traceback), and is a thin skin over a library function. `tinybert` alone "
             "lists them with an example each; `tinybert COMMAND --help` lists a command's options, the same "
             "ones as its page here.", "", "| command | what it does | example |", "|---|---|---|"]
    for name, (_, _, _, help_text, _) in COMMANDS.items():
        lines.append(f"| [`{name}`]({name}.md) | {_cell(help_text)} | `{_cell(EXAMPLES[name])}` |")
    lines += ["", "## Shell completion", "",
              "`tinybert --print-completion bash` (or `zsh`) prints a completion script generated from the same "
              "parser, so it knows every command and option:", "", "```bash",
              "tinybert --print-completion bash > ~/.local/share/bash-completion/completions/tinybert",
              "tinybert --print-completion zsh > ~/.zfunc/_tinybert   # with fpath+=(~/.zfunc) before compinit",
              "```", ""]
    return "\n".join(lines)


def _section_title(name: str) -> str:
    return f"`{name}:`" if name else "Top level"


def pipeline_page() -> str:
    lines = ["# Pipeline config", "", _snippet("pipeline.md"), ""]
    for name, section in SECTIONS.items():
        mirrored = [command for command, entry in COMMANDS.items() if entry[0] in _kinds_within(section.kind)]
        lines += [f"## {_section_title(name)} {{#{name or 'top-level'}}}", ""]
        if mirrored:
            links = " and ".join(f"[`tinybert {command}`](commands/{command}.md)" for command in mirrored)
            lines += [f"The options of {links}, under their long names without dashes (`_` or `-` between words)."]
            reading = {s.key for s in settings_of(DataOptions)}
            connected = sorted(section.wired - reading)
            if connected:
                lines += ["The pipeline gives " + ", ".join(f"`{key}`" for key in connected) + " itself: they "
                          "connect the stages."]
            if section.wired & reading:
                lines += ["The reading options (`text_column`, `skip_bad_lines`, ...) come from [`data:`](#data)."]
            lines += [""]
        defaults = values_of(section.default)
        settings = [s for s in settings_of(section.kind) if s.key not in section.wired]
        lines += ['<div class="options" markdown>', "", "| key | value | default | what it sets |", "|---|---|---|---|"]
        for setting in settings:
            default = "–" if setting.required else _default(setting, [defaults])
            lines.append(f"| `{setting.key}` | {_value(setting)} | {default} | {_cell(setting.help)} |")
        lines += ["", "</div>", ""]
    return "\n".join(lines)

