"""MkDocs hook: the page of error messages, read at build time from the ``InputError(problem,
fix=...)`` calls in the source, so that every message a user can meet is listed with its fix and
none that the code no longer raises is. A part computed at run time (a file name, a count) shows
as "…"; a message held in a variable is followed to the f-string assigned to it in its function.
"""

from __future__ import annotations

import ast
from pathlib import Path

from mkdocs.structure.files import File

import tinybert

PAGE = "reference/errors.md"
PACKAGE = Path(tinybert.__file__).resolve().parent
ERROR = "InputError"
HOLE = "…"


def on_files(files, config):
    files.append(File.generated(config, PAGE, content=errors_page()))
    return files


def _text(node: ast.AST | None, names: dict[str, ast.AST]) -> str | None:
    """What a message expression says, computed parts as holes; None when it is not text we can read."""
    if isinstance(node, ast.Name) and node.id in names:
        return _text(names[node.id], {})
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(part.value if isinstance(part, ast.Constant) else HOLE for part in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(node.left, names), _text(node.right, names)
        return None if left is None and right is None else (left or HOLE) + (right or HOLE)
    return None


def _messages(tree: ast.Module) -> list[tuple[str, str]]:
    """(problem, fix) of every InputError the module makes whose problem is text we can read."""
    found = []
    scopes = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for scope in scopes or [tree]:
        names = {target.id: node.value for node in ast.walk(scope) if isinstance(node, ast.Assign)
                 for target in node.targets if isinstance(target, ast.Name)}
        for node in ast.walk(scope):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == ERROR and node.args):
                continue
            problem = _text(node.args[0], names)
            fix = next((_text(keyword.value, names) for keyword in node.keywords if keyword.arg == "fix"), None)
            if problem and problem.strip(HOLE + " "):
                found.append((problem, fix or ""))
    return list(dict.fromkeys(found))  # a call inside a nested function is seen from both scopes


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("<", "&lt;").replace("\n", " ")


def _group_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(relative.parts[:2]) if len(relative.parts) > 2 else "tinybert"


def errors_page() -> str:
    groups: dict[str, list[tuple[str, str, str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for problem, fix in _messages(ast.parse(path.read_text(encoding="utf-8"))):
            groups.setdefault(_group_of(path), []).append((problem, fix, module))
    lines = ["# Error messages", "",
             "A bad file or option stops a command before it writes anything, with one message on standard error "
             "and exit code 2 (an export whose checks fail exits with 1), never a traceback:", "",
             "```text", "error: data/train.tsv: 2 malformed line(s) (lines 9088, 9914); line 9088: the text is empty",
             "  fix: correct those lines, or pass --skip-bad-lines to leave them out", "```", "",
             "The first line names the file (and line) and the problem, the second what to do. Below is every "
             f"message the code can give, read from it when these pages were built; {HOLE} stands for what is "
             "filled in at run time (a path, a value, a count). Search this page for the words of your message.",
             ""]
    # each subpackage with its own summary, then the modules of the package itself (command line, training, ...)
    for group in sorted(groups, key=lambda name: (name == PACKAGE.name, name)):
        messages, package = groups[group], PACKAGE.parent / Path(*group.split("."))
        summary = ""
        if group != PACKAGE.name:
            summary = ast.get_docstring(ast.parse((package / "__init__.py").read_text(encoding="utf-8"))) or ""
        lines += [f"## `{group}`", ""]
        if summary:
            lines += [summary.split("\n\n")[0].replace("\n", " "), ""]
        lines += ["| message | fix | raised in |", "|---|---|---|"]
        lines += [f"| {_cell(problem)} | {_cell(fix)} | `{module}` |" for problem, fix, module in messages]
        lines += [""]
    return "\n".join(lines)
