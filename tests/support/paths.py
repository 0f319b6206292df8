"""Where the project is: subprocesses run from here, and tests read its files (Dockerfile, pyproject.toml …)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
