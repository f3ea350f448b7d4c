"""The environment holds the exact versions constraints.txt pins: `make install` installs them,
and CI runs the suite on a fresh clone, so a release the suite never saw cannot slip in."""

import re
from importlib.metadata import PackageNotFoundError, version

from conftest import REPO

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


def _pins() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pins = {match.group(1): match.group(2) for line in lines if (match := PIN.match(line.strip()))}
    assert len(pins) == len([line for line in lines if line.strip() and not line.startswith("#")]), \
        "every line of constraints.txt pins one exact version"
    return pins


def test_the_installed_packages_are_the_pinned_versions():
    pins = _pins()
    assert {"torch", "transformers", "accelerate", "tokenizers", "safetensors", "onnxruntime"} <= pins.keys()
    installed = {}
    for name in pins:
        try:
            installed[name] = version(name).split("+")[0]  # a local build label (+cpu) is the same release
        except PackageNotFoundError:
            installed[name] = None
    assert {name: (pins[name], found) for name, found in installed.items() if found != pins[name]} == {}, \
        "run `make install` (or `make constraints` to move the pins on purpose)"
