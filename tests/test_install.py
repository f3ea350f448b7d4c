"""The environment holds the exact versions constraints.txt pins: `make install` installs them,
and CI runs the suite on a fresh clone, so a release the suite never saw cannot slip in."""

import re
import sysconfig
from importlib.metadata import distributions

from conftest import REPO

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


def _pins() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pins = {match.group(1): match.group(2) for line in lines if (match := PIN.match(line.strip()))}
    assert len(pins) == len([line for line in lines if line.strip() and not line.startswith("#")]), \
        "every line of constraints.txt pins one exact version"
    return pins


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # as pip compares distribution names


def test_the_installed_packages_are_exactly_the_pinned_versions():
    pins = {_name(name): pinned for name, pinned in _pins().items()}
    assert {"torch", "transformers", "accelerate", "tokenizers", "safetensors", "onnxruntime"} <= pins.keys()
    # the environment's own packages (not the demo's assets, which some tests put on the path); a local
    # build label (+cpu) is the same release
    site = {sysconfig.get_paths()[kind] for kind in ("purelib", "platlib")}
    installed = {_name(d.metadata["Name"]): d.version.split("+")[0] for d in distributions(path=sorted(site))}
    unpinned = set(installed) - set(pins) - {"pip", "setuptools", "tinybert"}
    assert unpinned == set(), "installed without a pin: run `make constraints` to pin them on purpose"
    assert {name: (pinned, installed.get(name)) for name, pinned in pins.items() if installed.get(name) != pinned} == {}, \
        "run `make install` (or `make constraints` to move the pins on purpose)"
    assert not [name for name in installed if name.startswith("nvidia-") or name == "triton"], "a CUDA build of torch"


def test_make_constraints_takes_torch_from_the_index_make_install_does():
    """Where PyPI's torch is the CUDA build, `make constraints TORCH_INDEX=...` must take torch from
    that index, as `make install` does, or its own check for a CUDA build fails."""
    import shutil
    import subprocess
    import pytest
    if shutil.which("make") is None:
        pytest.skip("no make")
    index = "https://download.pytorch.org/whl/cpu"
    for target in ("constraints", "install"):
        planned = subprocess.run(["make", "-n", "-B", target, f"TORCH_INDEX={index}", "PYTHON=python3"], cwd=REPO,
                                 capture_output=True, text=True, check=True).stdout
        installs = [line for line in planned.splitlines() if "pip install" in line and "torch" in line]
        assert installs and all(f"--extra-index-url {index}" in line for line in installs), (target, installs)
