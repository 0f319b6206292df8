"""Every ``serve`` flag is documented as its environment variable in docs/deployment.md (the container's way in)."""

from __future__ import annotations

import argparse
import re

from serving.cli import build_parser
from tests.support.paths import ROOT


def test_every_serve_flag_has_its_variable_in_the_deployment_table() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {option for action in sub.choices["serve"]._actions for option in action.option_strings
             if option.startswith("--") and option != "--help"}
    variables = {"SERVING_" + flag[2:].upper().replace("-", "_") for flag in flags}
    table = (ROOT / "docs" / "deployment.md").read_text()
    documented = set(re.findall(r"`(SERVING_[A-Z0-9_]+)`", table))
    assert not variables - documented, f"serve flags missing from docs/deployment.md: {sorted(variables - documented)}"
