"""The maintainer tooling agrees with itself: one ruff version everywhere, CI lints before it tests, and the
commit-message hook refuses what CONTRIBUTING.md refuses."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff_pins(text: str) -> set[str]:
    return set(re.findall(r"ruff==([\w.]+)", text))


def test_pre_commit_and_the_test_extra_pin_the_same_ruff():
    pyproject, hooks = (ROOT / "pyproject.toml").read_text(), (ROOT / ".pre-commit-config.yaml").read_text()
    assert len(_ruff_pins(pyproject)) == 1 and _ruff_pins(hooks) == _ruff_pins(pyproject)


def test_ci_lints_then_runs_the_readme_test_command():
    steps = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("./bootstrap")]
    assert steps == ["./bootstrap lint", "./bootstrap test"]
    assert "./bootstrap test" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize(
    ("message", "accepted"),
    [
        ("Merge the CLIP head into SamClipModel\n\nDetails: numbers, commands.\n", True),
        ("x" * 72 + "\n", True),
        ("x" * 73 + "\n", False),
        ("Subject\nbody glued to the subject\n", False),
        ("Subject\n# a comment git strips\n", True),
    ],
)
def test_commit_message_hook(tmp_path, message, accepted):
    path = tmp_path / "COMMIT_EDITMSG"
    path.write_text(message)
    result = subprocess.run([str(ROOT / ".ci" / "check_commit_message"), str(path)], capture_output=True, text=True)
    assert (result.returncode == 0) == accepted, result.stderr
    if not accepted:
        assert result.stderr.startswith("commit message: ") and len(result.stderr.strip().splitlines()) == 1
