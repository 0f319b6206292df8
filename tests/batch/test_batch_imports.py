"""serving/ has no import cycle, counting the imports inside functions (scripts/import_cycles.py), and that walker
finds the cycles it should: through a lazy import, through a package's ``__init__``, but not through
``if TYPE_CHECKING:``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.paths import ROOT


def _walker() -> ModuleType:
    """scripts/ is not a package: load the script as a module."""
    spec = importlib.util.spec_from_file_location("import_cycles", ROOT / "scripts" / "import_cycles.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_serving_has_no_import_cycle(capsys: pytest.CaptureFixture[str]) -> None:
    code = _walker().main([str(ROOT / "serving")])
    assert code == 0, capsys.readouterr().out


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_a_lazy_import_closes_a_cycle_and_type_checking_does_not(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    package = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkg.b import f\n",
        "b.py": "def f():\n    from pkg import a\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.d import g\nelse:\n    pass\n",
        "d.py": "from . import c\n",
    })
    assert _walker().main([str(package)]) == 1
    out = capsys.readouterr().out
    assert "1 cycle" in out
    assert "cycle: pkg.a <-> pkg.b" in out
    assert "pkg.b imports pkg.a (inside a function)" in out
    assert "pkg.c" not in out  # c -> d only under TYPE_CHECKING


def test_a_package_init_is_part_of_what_an_import_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    package = _package(tmp_path, {
        "__init__.py": "",
        "sub/__init__.py": "from pkg.sub.x import X\n",
        "sub/x.py": "X = 1\n",
        "y.py": "import pkg.sub.x\n",
        "sub/z.py": "def f():\n    import pkg.y\n",  # pkg.y runs pkg/sub/__init__ first: no cycle through z
    })
    assert _walker().main([str(package)]) == 0, capsys.readouterr().out
    (package / "sub" / "x.py").write_text("def f():\n    from pkg import y\n")  # y -> sub (init) -> x -> y
    assert _walker().main([str(package)]) == 1
    assert "cycle: pkg.sub <-> pkg.sub.x <-> pkg.y" in capsys.readouterr().out
