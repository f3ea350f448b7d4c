"""Settings defined once: a command's options are the fields of its dataclass, and the command
line, the pipeline's YAML sections and Python calls all come from those fields.

A field carries its type, default and help (``option(...)``), as in Hugging Face's example
scripts. ``HfArgumentParser`` turns one flat dataclass into flags named after its fields; ours
nest (training, loss weights and data-reading groups shared by several commands, each command
with its own defaults), keep the reference code's flag names and the YAML keys users already
have, and must check YAML values with the file and line of a mistake, which
``HfArgumentParser.parse_dict`` does not. So the tree is flattened here: each leaf field is a
``Setting`` with one key (the YAML key and argparse destination), its flags, its type and help.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import shlex
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

_FLAG_META = ("help", "flags", "key", "required", "hidden", "positional", "repeat")


def option(default=None, help: str = "", *, flags: tuple[str, ...] = (), key: str | None = None,
           required: bool = False, hidden: bool = False, positional: bool = False, repeat: bool = False,
           default_factory=dataclasses.MISSING):
    """A dataclass field that is a user-facing setting.

    ``flags``: further spellings on the command line (the reference code's, e.g. ``--learning_rate``);
    ``key``: the YAML key and argparse destination when it is not the field's name (``lr`` for
    ``learning_rate``); ``required``: the command line must give it; ``hidden``: accepted, not
    listed in --help; ``positional``: an argument without a flag; ``repeat``: a flag given several
    times collects its values.
    """
    metadata = {"help": help, "flags": flags, "key": key, "required": required, "hidden": hidden,
                "positional": positional, "repeat": repeat}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_of(key: str) -> str:
    """The command-line flag of a setting's key: ``relation_heads`` → ``--relation-heads``."""
    return "--" + key.replace("_", "-")


def group(title: str, default_factory=None):
    """A field holding a nested dataclass of settings (listed under ``title`` in --help);
    without ``default_factory`` it defaults to None (the function taking it fills it in)."""
    if default_factory is None:
        return dataclasses.field(default=None, metadata={"group": title})
    return dataclasses.field(default_factory=default_factory, metadata={"group": title})


@dataclass(frozen=True)
class Setting:
    key: str  # YAML key and argparse destination
    path: tuple[str, ...]  # attribute names from the top dataclass down to the field
    kind: type  # bool, int, float, str or list (of str)
    optional: bool
    choices: tuple | None
    help: str
    flags: tuple[str, ...]
    group: str | None
    required: bool = False
    hidden: bool = False
    positional: bool = False
    repeat: bool = False


def _nested_type(annotation) -> type | None:
    """The dataclass inside ``X`` or ``X | None``, else None."""
    candidates = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    return next((c for c in candidates if dataclasses.is_dataclass(c)), None)


def _is_union(annotation) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _leaf(annotation) -> tuple[type, bool, tuple | None]:
    """(kind, None allowed, choices) of a field's type annotation."""
    optional = False
    if _is_union(annotation):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        annotation = members[0]
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        return type(choices[0]), optional, choices
    if typing.get_origin(annotation) is list:
        return list, optional, None
    return annotation, optional, None


def settings_of(cls, _path: tuple[str, ...] = (), _group: str | None = None) -> list[Setting]:
    """Every setting of a dataclass, nested groups flattened, in declaration order."""
    hints = typing.get_type_hints(cls)
    found: list[Setting] = []
    for item in dataclasses.fields(cls):
        nested = _nested_type(hints[item.name])
        if nested is not None:
            found += settings_of(nested, _path + (item.name,), item.metadata.get("group", _group))
            continue
        if "help" not in item.metadata:
            continue  # internal state, not a setting
        kind, optional, choices = _leaf(hints[item.name])
        meta = {name: item.metadata[name] for name in _FLAG_META}
        key = meta.pop("key") or item.name
        found.append(Setting(key=key, path=_path + (item.name,), kind=kind, optional=optional, choices=choices,
                             group=_group, **meta))
    keys = [s.key for s in found]
    if len(keys) != len(set(keys)):
        raise TypeError(f"{cls.__name__}: two settings share a key: {sorted(k for k in keys if keys.count(k) > 1)}")
    return found


def values_of(instance) -> dict[str, Any]:
    """{key: value} of every setting of a dataclass instance (a missing nested group: its type's defaults)."""
    values = {}
    for setting in settings_of(type(instance)):
        value = instance
        for name in setting.path:
            value = getattr(value, name)
            if value is None and name != setting.path[-1]:
                break
        values[setting.key] = value
    return values


def with_values(instance, changes: dict[str, Any]):
    """A copy of ``instance`` with the settings named by key set (nested groups copied, not shared)."""
    by_key = {s.key: s for s in settings_of(type(instance))}
    unknown = set(changes) - set(by_key)
    if unknown:
        raise KeyError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    tree: dict = {}
    for key, value in changes.items():
        node = tree
        *parents, last = by_key[key].path
        for name in parents:
            node = node.setdefault(name, {})
        node[last] = value
    return _replace(instance, tree)


def _replace(instance, tree: dict):
    hints = typing.get_type_hints(type(instance))
    updates = {}
    for name, value in tree.items():
        if isinstance(value, dict) and _nested_type(hints[name]) is not None:
            current = getattr(instance, name)
            updates[name] = _replace(current if current is not None else _nested_type(hints[name])(), value)
        else:
            updates[name] = value
    return dataclasses.replace(instance, **updates)


def convert(setting: Setting, value, *, from_text: bool = False):
    """The value as the setting's type; ``ValueError`` with a plain message when it cannot be.
    ``from_text``: a command-line string; otherwise a YAML value (already a number, bool, ...)."""
    kind = setting.kind
    if value is None:
        if setting.optional:
            return None
        raise ValueError("is a switch: write true or false" if kind is bool else "needs a value")
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"is a switch, not {value!r}: write true or false")
        return value
    if kind in (int, float):
        number = _number(value, kind)
        if number is None:
            whole = "a whole number" if kind is int else "a number"
            raise ValueError(f"must be {whole}, not {value!r}")
        value = number
    elif kind is list:
        value = [str(item) for item in value] if isinstance(value, (list, tuple)) else [str(value)]
    elif kind is str:
        if isinstance(value, (list, dict)):
            raise ValueError(f"must be text, not {value!r}")
        value = str(value)
    if setting.choices is not None and value not in setting.choices:
        raise ValueError(f"is {value!r}: use one of {', '.join(map(str, setting.choices))}")
    return value


def _number(value, kind: type):
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip()) if kind is float else int(value.strip())
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    if kind is int:
        return int(value) if float(value).is_integer() else None
    return float(value)


def closest(name: str, known) -> str | None:
    matches = difflib.get_close_matches(name, list(known), n=1)
    return matches[0] if matches else None


# --------------------------------------------------------------------------------------------
# The command line


def _describe(value) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def add_arguments(parser: argparse.ArgumentParser, cls, defaults, cases: str | None = None) -> list[Setting]:
    """Adds one option per setting of ``cls`` (grouped as the dataclass nests them). Options not
    given on the command line stay out of the parsed namespace, so ``with_values(base, given)``
    applies exactly what the user typed to whichever base instance applies.

    ``defaults``: the instance whose values --help shows, or several when the defaults depend on
    the setting named ``cases`` (distillation's stage): each differing default is then shown
    with the case it belongs to."""
    instances = defaults if isinstance(defaults, list) else [defaults]
    shown = [values_of(instance) for instance in instances]
    groups: dict[str | None, Any] = {None: parser}
    added = []
    for setting in settings_of(cls):
        target = groups.get(setting.group) or groups.setdefault(setting.group, parser.add_argument_group(setting.group))
        options = {"help": argparse.SUPPRESS if setting.hidden else _help(setting, shown, cases)}
        if setting.kind is bool:
            options["action"] = "store_true"
        else:
            options["type"] = _text_converter(setting)
            if setting.repeat:
                options["action"] = "append"
            elif setting.kind is list:
                options["nargs"] = "+"
            if setting.choices:
                options["choices"] = setting.choices
                options["metavar"] = "{" + ",".join(map(str, setting.choices)) + "}"
        if setting.positional:
            target.add_argument(setting.key, **options)
        else:
            flags = [flag_of(setting.key), *setting.flags]
            target.add_argument(*dict.fromkeys(flags), dest=setting.key, default=argparse.SUPPRESS,
                                required=setting.required, **options)
        added.append(setting)
    return added


def _help(setting: Setting, shown: list[dict], cases: str | None) -> str:
    values = [values[setting.key] for values in shown]
    if setting.required or setting.kind is bool or values[0] is None:
        return setting.help
    if len({_describe(value) for value in values}) == 1 or setting.key == cases:
        default = _describe(values[0])
    else:
        default = ", ".join(f"{_describe(value)} ({values[cases]})" for value, values in zip(values, shown))
    return f"{setting.help} (default {default})"


def _text_converter(setting: Setting):
    item = dataclasses.replace(setting, kind=str) if setting.kind is list else setting

    def parse(text: str):
        try:
            return convert(item, text, from_text=True)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    parse.__name__ = setting.kind.__name__  # argparse names the type in its messages
    return parse


def given_values(namespace: argparse.Namespace, settings: list[Setting]) -> dict[str, Any]:
    """The settings the command line gave, by key."""
    return {s.key: getattr(namespace, s.key) for s in settings if hasattr(namespace, s.key)}


def command_line(command: str, instance, defaults, always: tuple[str, ...] = ()) -> str:
    """``tinybert COMMAND`` with the options that give ``instance``'s settings: those that differ
    from ``defaults``'s (the command line's defaults for that case: distillation's depend on the
    stage), the required ones and those named in ``always`` (the setting that picks the defaults, so
    the command reads back under the same ones)."""
    given, default = values_of(instance), values_of(defaults)
    words = ["tinybert", command]
    for setting in settings_of(type(instance)):
        value = given[setting.key]
        if value is None or value is False or (value == default[setting.key] and not setting.required
                                               and setting.key not in always):
            continue
        values = [str(item) for item in value] if isinstance(value, list) else [] if value is True else [str(value)]
        if setting.positional:
            words += values
        elif setting.repeat:
            words += [part for item in values for part in (flag_of(setting.key), item)]
        else:
            words += [flag_of(setting.key), *values]
    return shlex.join(words)
