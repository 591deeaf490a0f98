"""docs/CLUSTER.md: every flag of its commands exists in the script it is given to, and the tests it names exist."""
from __future__ import annotations

import re
from pathlib import Path

from hypermorph_spatially_adaptive.stages import identification, training

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "CLUSTER.md").read_text()
PARSERS = {"train_hypermorph_global.py": training.build_parser("global"),
           "train_hypermorph_spatial.py": training.build_parser("spatial"),
           "parameter_identification.py": identification.build_parser()}


def _commands() -> list[tuple[str, str]]:
    """(script, the rest of its command line) of every command in the page's code blocks."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", DOC, re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            for match in re.finditer(r"(train_hypermorph_global\.py|train_hypermorph_spatial\.py|"
                                     r"parameter_identification\.py)([^\"]*)", line):
                commands.append((match.group(1), match.group(2)))
    return commands


def test_every_flag_in_the_commands_exists():
    commands = _commands()
    assert {script for script, _ in commands} == set(PARSERS)
    for script, rest in commands:
        known = {flag for action in PARSERS[script]._actions for flag in action.option_strings}
        unknown = [flag for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest) if flag not in known]
        assert not unknown, f"{script}: {unknown}"


def test_the_tests_it_names_exist():
    named = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", DOC)
    assert len(named) >= 3
    for path, test in named:
        source = (ROOT / path).read_text()
        assert not test or f"def {test}(" in source, f"{path}::{test}"
