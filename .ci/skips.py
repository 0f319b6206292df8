"""CI's account of what did not run: every skipped (or xfailed) test of a pytest JUnit report, with its reason, checked
against .ci/expected-skips.

    python3 .ci/skips.py REPORT.xml [--expected .ci/expected-skips] [--profile nogpu|gpu]

REPORT.xml is pytest's ``--junitxml`` written with ``-o junit_family=xunit1`` (that family keeps each test's file, so
the test ids printed here are pytest's own, ``tests/x/test_y.py::test_z[param]``). Exit status: 0 when the report
holds at least one test and every skip is expected; 1 otherwise (an unexpected skip, or no tests at all: pytest's
exit code 5 must not pass as green); 2 when the report cannot be read. An expected skip that did not happen is only
mentioned: the test ran, which is better news than the list assumed.

Standard library only: it runs with the system's python3, before or without the project's venv.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

PROFILES = ("nogpu", "gpu")


@dataclass(frozen=True)
class Skip:
    """One test that did not run: pytest's id, why, and whether it was an xfail rather than a skip."""

    test: str
    reason: str
    xfail: bool = False


@dataclass(frozen=True)
class Expected:
    """One line of the allow-list: the profiles it applies to, and fnmatch patterns for the test id and the reason."""

    profile: str
    test: str
    reason: str
    line: int

    def matches(self, skip: Skip, profile: str) -> bool:
        return (self.profile in ("any", profile) and fnmatch.fnmatchcase(skip.test, self.test)
                and fnmatch.fnmatchcase(skip.reason, self.reason))


def read_expected(path: Path) -> list[Expected]:
    """``PROFILE TEST REASON…`` per line (the reason: the rest of the line); blank lines and ``#`` comments skipped."""
    entries = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        fields = text.split(None, 2)
        if len(fields) != 3 or fields[0] not in (*PROFILES, "any"):
            raise ValueError(f"{path}:{number}: expected 'PROFILE TEST REASON' with PROFILE one of "
                             f"{', '.join((*PROFILES, 'any'))}, got {text!r}")
        entries.append(Expected(fields[0], fields[1], fields[2].strip(), number))
    return entries


def _test_id(case: ET.Element) -> str:
    """pytest's node id back from an xunit1 testcase: its file, the classes in ``classname``, and ``name``."""
    file, classname, name = case.get("file", ""), case.get("classname", ""), case.get("name", "")
    if not classname:  # a module skipped while collected: its name is the dotted module
        return file or name
    module = file[:-3].replace("/", ".") if file.endswith(".py") else ""
    classes = classname[len(module):].strip(".").split(".") if module and classname.startswith(module) else []
    return "::".join([file or classname, *(c for c in classes if c), name])


def _reason(element: ET.Element) -> str:
    """The skip's reason: the message, or for a module skipped at collection the reason in pytest's (file, line,
    reason) tuple."""
    message = element.get("message", "")
    if message != "collection skipped":
        return message
    try:
        _file, _line, reason = ast.literal_eval(element.text or "")
    except (ValueError, SyntaxError, TypeError):
        return (element.text or message).strip()
    return str(reason).removeprefix("Skipped: ")


def read_report(path: Path) -> tuple[int, list[Skip]]:
    """The number of test cases in the report, and those that were skipped or xfailed."""
    root = ET.parse(path).getroot()
    cases = list(root.iter("testcase"))
    skips = [Skip(_test_id(case), _reason(skipped), skipped.get("type") == "pytest.xfail")
             for case in cases for skipped in case.findall("skipped")]
    return len(cases), skips


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--expected", type=Path, default=Path(__file__).with_name("expected-skips"))
    parser.add_argument("--profile", choices=PROFILES, default="nogpu",
                        help="the kind of machine: picks the allow-list lines that apply (default nogpu)")
    args = parser.parse_args(argv)
    try:
        expected = read_expected(args.expected)
        total, skips = read_report(args.report)
    except (OSError, ValueError, ET.ParseError) as e:
        print(f"ci: cannot check the skips: {e}")
        return 2

    if total == 0:
        print(f"ci: {args.report} holds no tests: pytest ran nothing, which is not a green run")
        return 1
    unexpected = [s for s in skips if not any(e.matches(s, args.profile) for e in expected)]
    print(f"ci: {total} test{'s' if total != 1 else ''}, {len(skips)} not run ({len(unexpected)} unexpected; "
          f"profile {args.profile}, allow-list {args.expected}){':' if skips else ''}")
    for skip in skips:
        kind = "xfail" if skip.xfail else "skip"
        verdict = "UNEXPECTED" if skip in unexpected else "expected"
        print(f"  {verdict} {kind}: {skip.test}: {skip.reason}")
    for entry in expected:
        if entry.profile in ("any", args.profile) and not any(fnmatch.fnmatchcase(s.test, entry.test) for s in skips):
            print(f"  note: {args.expected}:{entry.line} expects a skip that did not happen ({entry.test}): the test "
                  "ran (or was not collected)")
    if unexpected:
        print("ci: failing on the unexpected skips above: make them run here (install what they need), or, if they "
              f"cannot run on this kind of machine, add them to {args.expected} with the reason")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
