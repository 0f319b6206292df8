"""The model repository's folders: ``ROOT/NAME/VERSION/``, one rule for names and one for versions.

The exporter writes these folders and the server reads them, both through this module, so a folder that one side
accepts the other accepts too.
"""

from __future__ import annotations

import re
from pathlib import Path

from serving.errors import ModelNotFound

# A name is a folder and travels in URLs and metrics labels: no leading dot (hidden, like the exporter's staging
# folders), no slash, no space.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}"
# A version is a positive integer written without leading zeros, at most 18 digits (it fits an int64 and
# stays far below Python's int-parsing limits): "01" and "1" cannot both name version 1.
VERSION_PATTERN = r"[1-9][0-9]{0,17}"
_NAME = re.compile(NAME_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)


def is_model_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def check_model_name(name: str) -> str:
    """``name``, or ``ValueError`` saying the rule."""
    if not is_model_name(name or ""):
        raise ValueError(f"model name {name!r} must match {NAME_PATTERN}")
    return name


def parse_version(text: str) -> int | None:
    """A version folder's name (or a ``NAME:VERSION`` selector's version) → its number; None if it is none."""
    return int(text) if _VERSION.fullmatch(text) else None


def version_dirs(model_dir: Path) -> dict[int, Path]:
    """Version number → folder, for every sub-folder of ``model_dir`` whose name is a version (published or not)."""
    if not model_dir.is_dir():
        return {}
    found = {}
    for path in model_dir.iterdir():
        version = parse_version(path.name)
        if version is not None and path.is_dir():
            found[version] = path
    return found


def discover(root: str | Path) -> dict[str, list[int]]:
    """Model name → its versions, ascending: version folders holding a ``model.json``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"model repository {root} is not a directory")
    found: dict[str, list[int]] = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and is_model_name(p.name)):
        versions = sorted(v for v, path in version_dirs(model_dir).items() if (path / "model.json").is_file())
        if versions:
            found[model_dir.name] = versions
    return found


def fingerprint(version_dir: str | Path) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime) of each file in a version folder: a refused version is retried only once it changed."""
    try:
        entries = sorted(Path(version_dir).iterdir())
    except OSError:
        return ()
    found = []
    for path in entries:
        try:
            st = path.stat()
        except OSError:  # removed while we looked
            continue
        found.append((path.name, st.st_size, st.st_mtime_ns))
    return tuple(found)


def parse_selector(selector: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME:VERSION`` (a pinned version)."""
    name, sep, version_text = selector.partition(":")
    version = parse_version(version_text) if sep else None
    if not is_model_name(name) or (sep and version is None):
        raise ValueError(f"model selector must be NAME or NAME:VERSION, got {selector!r}")
    return name, version


def select(root: str | Path, selectors: list[str] | tuple[str, ...] = ()) -> dict[str, tuple[int, list[int]]]:
    """Which version of which model to serve: name → (chosen version, all versions). Latest unless pinned."""
    available = discover(root)
    if not selectors:
        return {name: (versions[-1], versions) for name, versions in available.items()}
    chosen: dict[str, tuple[int, list[int]]] = {}
    for selector in selectors:
        name, version = parse_selector(selector)
        if name not in available:
            raise ModelNotFound(f"model {name!r} is not in {root} (found: {', '.join(available) or 'nothing'})")
        versions = available[name]
        if version is not None and version not in versions:
            raise ModelNotFound(f"model {name!r} has no version {version} in {root} (found: {versions})")
        chosen[name] = (version if version is not None else versions[-1], versions)
    return chosen
