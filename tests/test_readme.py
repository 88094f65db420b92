"""The README's set-up is what CI runs: every command of its Install block, its first Run block and its
Test block appears verbatim in .ci/run, in the same order."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def first_block(readme: str, section: str) -> list[str]:
    """The command lines of the first ```bash block under `## section`."""
    body = readme.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", body, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_commands_in_order():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    commands = first_block(readme, "Install") + first_block(readme, "Run") + first_block(readme, "Test")
    assert commands[-2:] == ["hybrid-k2 chat", "pytest"] and "'.[test]'" in commands[0]
    at = [next((i for i, line in enumerate(ci) if line == c or line.startswith(c + " <")), None) for c in commands]
    assert None not in at, dict(zip(commands, at))
    assert at == sorted(at)
