"""README and CI stay in step with the code."""

from __future__ import annotations

import re
from pathlib import Path

from chatd.config import settings_table

ROOT = Path(__file__).parent.parent


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    test_cmd = next(b for b in blocks if "pytest" in b)
    assert test_cmd in (ROOT / ".ci" / "run").read_text()


def test_readme_lists_every_setting_as_the_code_defines_it() -> None:
    assert settings_table() in (ROOT / "README.md").read_text()
