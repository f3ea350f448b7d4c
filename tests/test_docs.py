"""The documentation: the site builds with --strict (a broken page, a dead link or anchor, a page
left out of the navigation fails it), its generated reference holds every option of every command
and every key of the pipeline, the commands and configs the pages show are valid, the README
stays a front door, and the classifier tutorial runs as written."""

import argparse
import ast
import html
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, write
from tinybert.cli import COMMANDS, build_parser
from tinybert.pipeline import SECTIONS, load_config

DOCS = REPO / "docs"
README = REPO / "README.md"
PAGES = [README] + sorted(DOCS.rglob("*.md"))
# the commands whose every long option must be documented (new ones are checked as they come)
DOCUMENTED = {"finetune", "general", "augment", "distill", "evaluate", "convert", "export", "predict", "pipeline",
              "demo", "sizes", "cache"}
README_LINES = 250
# "issue 14", "issues 21-25", "PR 3", "#103": tracker references (a link's #anchor is none)
TRACKER_REFERENCE = re.compile(r"(?i)\b(?:issues?|tickets?|pull requests?|PRs?)\s*#?\d+|(?<![/.\w])#\d+(?![\w-])")
FENCE = re.compile(r"^```[ ]*(\{[^}\n]*\}|[\w-]*)[^\n]*\n(.*?)^```[ ]*$", re.M | re.S)
SHELL_OPERATORS = set("();<>|&")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built as `make docs` builds it, into a folder of its own."""
    from mkdocs.commands.build import build
    from mkdocs.config import load_config as load_mkdocs_config

    os.environ["NO_MKDOCS_2_WARNING"] = "1"  # Material's banner about MkDocs 2.0, printed at every build
    folder = tmp_path_factory.mktemp("site")
    build(load_mkdocs_config(str(REPO / "mkdocs.yml"), strict=True, site_dir=str(folder)))  # Abort on a warning
    return folder


def _text(path: Path) -> str:
    return html.unescape(path.read_text(encoding="utf-8"))


def _blocks(path: Path) -> list[tuple[str, set[str], str, str]]:
    """(language, classes, title, text) of each fenced block of a Markdown page."""
    found = []
    for info, body in FENCE.findall(path.read_text(encoding="utf-8")):
        if info.startswith("{"):
            classes = set(re.findall(r"\.([\w-]+)", info))
            language = next(iter(re.findall(r"\{\s*\.([\w-]+)", info)), "")
            title = next(iter(re.findall(r'title="([^"]+)"', info)), "")
        else:
            classes, language, title = set(), info, ""
        found.append((language, classes, title, body))
    return found


def _long_options(command: str) -> set[str]:
    commands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    return {flag for action in commands.choices[command]._actions for flag in action.option_strings
            if flag.startswith("--") and flag != "--help"}


def test_every_long_option_of_every_command_is_on_its_reference_page(site):
    assert DOCUMENTED <= set(COMMANDS)
    for command in COMMANDS:
        page = _text(site / "reference" / "commands" / command / "index.html")
        missing = {flag for flag in _long_options(command) if f"<code>{flag}</code>" not in page}
        assert missing == set(), (command, missing)


def test_every_key_of_the_pipeline_config_is_in_its_section(site):
    page = _text(site / "reference" / "pipeline" / "index.html")
    for name, section in SECTIONS.items():
        start = page.index(f'id="{name or "top-level"}"')
        end = page.find("<h2", start)
        missing = [key for key in section.keys if f"<code>{key}</code>" not in page[start:end]]
        assert missing == [], (name, missing)


def test_the_error_page_lists_the_messages_of_the_code(site):
    page = _text(site / "reference" / "errors" / "index.html")
    assert "the text is empty" in page and "pass --skip-bad-lines to leave them out" in page
    assert "no column named" in page and "the config must be a mapping of sections" in page
    assert page.count("<tr>") > 100


def test_the_readme_is_a_front_door_and_no_page_names_a_tracker_issue(site):
    assert len(README.read_text().splitlines()) <= README_LINES
    sources = PAGES + sorted((DOCS / "hooks").glob("*.py"))
    named = {str(path.relative_to(REPO)): match.group(0) for path in sources
             for match in [TRACKER_REFERENCE.search(path.read_text(encoding="utf-8"))] if match}
    built = {str(path.relative_to(site)): match.group(0) for path in site.rglob("*.html")
             for match in [TRACKER_REFERENCE.search(re.sub(r"<[^>]+>", " ", _text(path)))] if match}
    assert named == {} and built == {}


def test_the_readme_links_to_pages_that_exist():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    assert links and [link for link in links if "://" not in link and not (REPO / link).exists()] == []


def _tinybert_calls(script: str):
    """The arguments of every `tinybert ...` (or `-m tinybert.cli ...`) call in a shell script."""
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        segment: list[str] = []
        for word in [*lexer, ";"]:
            if not set(word) <= SHELL_OPERATORS:
                segment.append(word)
                continue
            if segment[:1] == ["tinybert"]:
                yield segment[1:]
            elif "tinybert.cli" in segment:
                yield segment[segment.index("tinybert.cli") + 1:]
            segment = []


def test_every_command_the_pages_show_parses():
    calls = [(path.name, argv) for path in PAGES for language, _, _, body in _blocks(path) if language == "bash"
             for argv in _tinybert_calls(body)]
    assert len(calls) > 30
    for page, argv in calls:
        if not argv:  # `tinybert` alone prints the overview
            continue
        try:
            build_parser().parse_args(argv)
        except SystemExit as exit:  # --help, --print-completion: 0
            assert exit.code == 0, (page, argv)


def test_every_option_the_pages_name_in_passing_exists():
    """`tinybert COMMAND --flag ...` in running text (tables of results, ...): its flags are the command's."""
    spans = [(path.name, span.replace("\n", " ")) for path in PAGES
             for span in re.findall(r"`(tinybert [^`]+)`", path.read_text(encoding="utf-8"))]
    assert len(spans) > 30
    for page, span in spans:
        for argv in _tinybert_calls(span):
            if argv[:1] and argv[0] in COMMANDS:
                flags = {word.split("=")[0] for word in argv[1:] if word.startswith("--")}
                assert flags <= _long_options(argv[0]), (page, span, flags - _long_options(argv[0]))


def test_every_python_example_the_pages_show_compiles_and_imports_what_exists():
    blocks = [(path.name, body) for path in PAGES for language, _, _, body in _blocks(path) if language == "python"]
    assert len(blocks) >= 3
    for page, body in blocks:
        for node in ast.walk(ast.parse(body, page)):
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                assert all(hasattr(module, alias.name) for alias in node.names), (page, ast.unparse(node))


def test_every_pipeline_config_the_pages_show_loads(tmp_path):
    sections = set(SECTIONS) | set(SECTIONS[""].keys) | {"quick", "students"}
    configs = [(path.name, body) for path in PAGES for language, _, _, body in _blocks(path) if language == "yaml"]
    checked = 0
    for number, (page, body) in enumerate(configs):
        keys = set(re.findall(r"^([\w-]+):", body, re.M))
        if keys and keys <= sections:
            config = load_config(write(tmp_path / f"{number}.yaml", body))
            assert config.sections, page
            checked += 1
    assert checked >= 5


@pytest.mark.slow
def test_the_classifier_tutorial_runs_as_written(tmp_path):
    """The blocks marked runnable, in order, in an empty folder: files written, commands run."""
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    outputs = []
    for language, classes, title, body in _blocks(DOCS / "tutorials" / "classifier.md"):
        if "runnable" not in classes:
            continue
        if title:
            (tmp_path / title).write_text(body, encoding="utf-8")
            continue
        assert language == "bash"
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=tmp_path, env=environment,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{body}\n{result.stderr[-3000:]}"
        outputs.append(result.stdout)
    assert (tmp_path / "runs" / "rehearsal" / "report.md").is_file() and "retention" in outputs[-2]
    header, prediction = outputs[-1].splitlines()
    assert header.split("\t")[:2] == ["text", "label"]
    assert prediction.split("\t")[1] in ("fresh", "rotten")
