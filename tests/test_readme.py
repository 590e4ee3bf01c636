"""The README opens with the two commands a newcomer runs, and CI runs the same test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _first_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README.md must open with a bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_demo_and_tests() -> None:
    demo, tests = _first_commands()[:2]
    assert demo.endswith("python -m azure_msiv2_credential demo")
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command() -> None:
    assert _first_commands()[1] in (ROOT / ".ci" / "run").read_text()


def test_every_error_code_is_in_the_troubleshooting_table() -> None:
    from azure_msiv2_credential import ErrorCode

    readme = (ROOT / "README.md").read_text()
    codes = [v for k, v in vars(ErrorCode).items() if k.isupper()]
    assert codes
    missing = [code for code in codes if f"| `{code}` |" not in readme]
    assert not missing, f"README troubleshooting table lacks {missing}"
