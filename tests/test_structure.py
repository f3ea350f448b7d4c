"""The shape of the code: settings defined once, no import circles, modules a reader can hold."""

import ast

import pytest

from conftest import REPO, write
from tinybert.cli import COMMANDS, parse
from tinybert.models.pruning import PruningOptions
from tinybert.models.static import StaticOptions
from tinybert.pipeline import SECTIONS, load_config
from tinybert.settings import settings_of, values_of

PACKAGE = REPO / "src" / "tinybert"
MAX_LINES = 350

# the pipeline section(s) that take each command's settings
SECTIONS_OF = {"finetune": ["finetune", "baseline"], "general": ["general"], "augment": ["augment"],
               "distill": ["intermediate", "prediction"], "evaluate": ["evaluate"], "export": ["export"]}
# the minimal command line of each command (its required options)
REQUIRED = {"finetune": ["--model", "m", "--output", "o"], "evaluate": ["--model", "m", "--data", "d"],
            "distill": ["--teacher", "t", "--output", "o"], "general": ["--teacher", "t", "--corpus", "c", "--output", "o"],
            "augment": ["--input", "i"], "convert": ["--input", "i", "--output", "o"],
            "export": ["--model", "m", "--output", "o"], "predict": ["--model", "m", "--input", "i"],
            "pipeline": ["c.yaml"], "demo": [], "cache": ["list"], "sizes": ["--teacher", "t"]}


def _other_value(setting, default):
    """A valid value unlike the default, as a command-line string and as the parsed value."""
    if setting.repeat:
        return "section.key=1", ["section.key=1"]
    if setting.choices:
        value = next(choice for choice in setting.choices if choice != default)
        return str(value), value
    if setting.kind is bool:
        return None, True
    if setting.kind is int:
        return "7", 7
    if setting.kind is float:
        return "0.125", 0.125
    if setting.kind is list:
        return ["a.txt", "b.txt"], ["a.txt", "b.txt"]
    return "some-value", "some-value"


def _cli(command, extra=(), stage=None):
    argv = [command, *REQUIRED[command], *(["--stage", stage] if stage else []), *extra]
    return values_of(parse(argv)[1])


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_setting_is_reachable_from_the_cli_with_the_dataclass_default(command):
    kind, defaults, _, _, _ = COMMANDS[command]
    for stage, default in ([("intermediate", defaults[0]), ("prediction", defaults[1])]
                           if isinstance(defaults, list) else [(None, defaults)]):
        expected = values_of(default)
        parsed = _cli(command, stage=stage)
        for setting in settings_of(kind):
            if setting.required or setting.positional:
                continue
            assert parsed[setting.key] == expected[setting.key], (command, setting.key)
            if setting.key == "stage":
                continue
            text, value = _other_value(setting, expected[setting.key])
            flag = f"--{setting.key.replace('_', '-')}"
            words = [flag] if text is None else [flag, *text] if isinstance(text, list) else [flag, text]
            assert _cli(command, words, stage=stage)[setting.key] == value, (command, setting.key)


@pytest.mark.parametrize("command", list(SECTIONS_OF))
def test_every_setting_is_reachable_from_yaml_with_the_same_default(tmp_path, command):
    config_file = write(tmp_path / "empty.yaml", "")
    defaults = load_config(config_file)
    kind = COMMANDS[command][0]
    for section in SECTIONS_OF[command]:
        cli_defaults = _cli(command, stage=section if command == "distill" else None)
        for setting in settings_of(kind):
            home = section if setting.key in SECTIONS[section].keys else "data"
            if setting.key not in SECTIONS[home].keys:
                continue  # a path the pipeline connects itself (train, output, ...)
            if not setting.required:  # the command line must give those
                assert defaults.values[home][setting.key] == cli_defaults[setting.key], (section, setting.key)
            text, value = _other_value(setting, cli_defaults[setting.key])
            override = f"{home}.{setting.key}={value if not isinstance(value, list) else ','.join(value)}"
            if isinstance(value, list):
                override = f"{home}.{setting.key}=[{', '.join(value)}]"
            assert load_config(config_file, [override]).values[home][setting.key] == value, override
        wired = set(SECTIONS[section].wired) - {s.key for s in settings_of(SECTIONS["data"].kind)}
        per_student = {s.key for kind in (PruningOptions, StaticOptions) for s in settings_of(kind)}  # students:
        assert wired <= {"train", "eval", "output", "input", "model", "data", "json", "teacher", "stage",
                         "student", "layers", "layer_map", "init_from_teacher"} | per_student, wired


def _imports() -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("tinybert",) + path.relative_to(PACKAGE).with_suffix("").parts
        modules[".".join(parts).removesuffix(".__init__")] = path
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name] |= {target for target in targets if target in modules and target != name}
    return graph


def test_no_import_circles_and_the_library_never_imports_the_cli():
    graph = _imports()
    state: dict[str, int] = {}

    def visit(module, stack):
        state[module] = 1
        for target in graph[module]:
            assert state.get(target) != 1, "import circle: " + " → ".join(stack[stack.index(target):] + [target])
            if target not in state:
                visit(target, stack + [target])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert not [module for module, targets in graph.items() if "tinybert.cli" in targets]


def test_every_module_fits_in_one_sitting():
    long = {str(path.relative_to(PACKAGE)): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    assert {name: lines for name, lines in long.items() if lines > MAX_LINES} == {}
