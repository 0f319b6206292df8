"""Read a Dockerfile and a .dockerignore the way the builder does, without a Docker engine.

Enough of the format for the checks in ``deploy.check`` and the smoke test in ``tests/deploy``: line continuations,
comments, stages (``FROM … AS name``, with ENV/WORKDIR/USER/CMD inherited from an earlier stage), ENV with ``$VAR``
expansion, exec-form (JSON) CMD/HEALTHCHECK, COPY with its flags, and .dockerignore patterns (``*``, ``?``, ``**``,
``!`` exceptions, last match wins, a match on a folder covers what is inside). Anything it does not understand raises
``DockerfileError`` rather than being guessed.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath


class DockerfileError(ValueError):
    """A Dockerfile construct this reader does not handle, or a malformed one."""


@dataclass(frozen=True)
class Instruction:
    keyword: str      # upper case: FROM, RUN, ENV, …
    args: str         # the rest of the (joined) line
    line: int         # 1-based line where the instruction starts


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]
    dest: str
    from_stage: str | None
    flags: dict[str, str]


@dataclass(frozen=True)
class Healthcheck:
    options: dict[str, str]   # --interval=10s → {"interval": "10s"}
    command: tuple[str, ...]  # the exec-form CMD


@dataclass
class Stage:
    name: str
    base: str                 # image or earlier stage the stage starts FROM
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


@dataclass(frozen=True)
class ImageConfig:
    """What a stage's image would carry: the effective settings after inheritance from earlier stages."""

    env: dict[str, str]
    workdir: str
    user: str | None
    cmd: tuple[str, ...] | None
    healthcheck: Healthcheck | None
    exposed: tuple[int, ...]
    volumes: tuple[str, ...]
    stopsignal: str | None


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Join continued lines and drop comments; returns (first line number, text) per instruction."""
    out: list[tuple[int, str]] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buffer):
            continue  # comments (and parser directives) vanish, even inside a continued instruction
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        out.append((start, " ".join(part for part in buffer if part)))
        buffer = []
    if buffer:
        raise DockerfileError(f"line {start}: the file ends inside a continued instruction")
    return out


def expand(value: str, env: Mapping[str, str]) -> str:
    """Docker's variable substitution in ENV/WORKDIR values: $VAR, ${VAR}, ${VAR:-default}, ${VAR:+alt}."""
    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain")
        op, word = match.group("op"), match.group("word")
        current = env.get(name, "")
        if op == ":-":
            return current or word
        if op == ":+":
            return word if current else ""
        return current

    pattern = r"\$(?:\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:[-+])(?P<word>[^}]*))?\}|(?P<plain>[A-Za-z_]\w*))"
    return re.sub(pattern, replace, value)


def _parse_env(args: str, env: Mapping[str, str]) -> dict[str, str]:
    words = shlex.split(args, posix=True)
    if words and "=" not in words[0]:  # legacy form: ENV KEY value with spaces
        return {words[0]: expand(" ".join(words[1:]), env)}
    pairs = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise DockerfileError(f"ENV {args!r}: {word!r} is not KEY=VALUE")
        pairs[key] = expand(value, env)  # every value sees the variables as they were before this ENV
    return pairs


def exec_form(args: str, what: str) -> tuple[str, ...]:
    """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD; the shell form is refused (it needs sh -c)."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        raise DockerfileError(f"{what} {args!r} is not in exec form (a JSON array)") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not value:
        raise DockerfileError(f"{what} {args!r} is not a non-empty JSON array of strings")
    return tuple(value)


def _split_flags(args: str) -> tuple[dict[str, str], list[str]]:
    words = shlex.split(args, posix=True)
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    return flags, words


def parse_copy(instruction: Instruction) -> Copy:
    flags, words = _split_flags(instruction.args)
    if words and words[0].startswith("["):
        words = list(exec_form(" ".join(words), "COPY"))
    if len(words) < 2:
        raise DockerfileError(f"line {instruction.line}: COPY needs a source and a destination")
    return Copy(tuple(words[:-1]), words[-1], flags.get("from"), flags)


def parse_healthcheck(instruction: Instruction) -> Healthcheck | None:
    flags, words = _split_flags(instruction.args)
    if words == ["NONE"]:
        return None
    if not words or words[0] != "CMD":
        raise DockerfileError(f"line {instruction.line}: HEALTHCHECK must be CMD or NONE")
    rest = instruction.args[instruction.args.index("CMD") + 3:].strip()
    return Healthcheck(flags, exec_form(rest, "HEALTHCHECK CMD"))


class Dockerfile:
    def __init__(self, text: str) -> None:
        self.args: dict[str, str] = {}   # ARGs declared before the first FROM (usable in FROM lines)
        self.stages: list[Stage] = []
        for line, logical in _logical_lines(text):
            keyword, _, args = logical.partition(" ")
            instruction = Instruction(keyword.upper(), args.strip(), line)
            if instruction.keyword == "FROM":
                self.stages.append(self._stage(instruction))
            elif not self.stages:
                if instruction.keyword != "ARG":
                    raise DockerfileError(f"line {line}: {instruction.keyword} before the first FROM")
                name, _, default = instruction.args.partition("=")
                self.args[name] = default
            else:
                self.stages[-1].instructions.append(instruction)

    def _stage(self, instruction: Instruction) -> Stage:
        _, words = _split_flags(instruction.args)  # --platform does not matter here
        if len(words) == 3 and words[1].upper() == "AS":
            return Stage(words[2], expand(words[0], self.args))
        if len(words) == 1:
            return Stage(str(len(self.stages)), expand(words[0], self.args))
        raise DockerfileError(f"line {instruction.line}: cannot read FROM {instruction.args!r}")

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        return cls(path.read_text())

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r} (stages: {', '.join(self.stage_names)})")

    def chain(self, name: str) -> list[Stage]:
        """The stage and the earlier stages it is built FROM, oldest first."""
        stage = self.stage(name)
        known = self.stage_names[: self.stage_names.index(name)]
        parents = self.chain(stage.base) if stage.base in known else []
        return [*parents, stage]

    def config(self, name: str, base_env: Mapping[str, str] | None = None) -> ImageConfig:
        """The image config of stage ``name``; ``base_env`` stands for the base image's own ENV (e.g. PATH)."""
        env: dict[str, str] = dict(base_env or {})
        workdir, user, cmd, health, stopsignal = "/", None, None, None, None
        exposed: list[int] = []
        volumes: list[str] = []
        for stage in self.chain(name):
            for ins in stage.instructions:
                if ins.keyword == "ENV":
                    env.update(_parse_env(ins.args, env))
                elif ins.keyword == "WORKDIR":
                    workdir = str(PurePosixPath(workdir) / expand(ins.args, env))
                elif ins.keyword == "USER":
                    user = expand(ins.args, env)
                elif ins.keyword == "CMD":
                    cmd = exec_form(ins.args, "CMD")
                elif ins.keyword == "HEALTHCHECK":
                    health = parse_healthcheck(ins)
                elif ins.keyword == "EXPOSE":
                    exposed += [int(p.split("/")[0]) for p in ins.args.split()]
                elif ins.keyword == "VOLUME":
                    volumes += list(exec_form(ins.args, "VOLUME")) if ins.args.startswith("[") else ins.args.split()
                elif ins.keyword == "STOPSIGNAL":
                    stopsignal = ins.args
                elif ins.keyword == "ENTRYPOINT":
                    raise DockerfileError(f"line {ins.line}: ENTRYPOINT is not handled by this reader")
        return ImageConfig(env, workdir, user, cmd, health, tuple(exposed), tuple(volumes), stopsignal)

    def copies(self, name: str) -> list[Copy]:
        """The COPY instructions of stage ``name`` (not of its parents)."""
        return [parse_copy(i) for i in self.stage(name).all("COPY")]


# ---- .dockerignore -------------------------------------------------------------------------------------------------

def _clean(pattern: str) -> str:
    cleaned = str(PurePosixPath("/" + pattern.strip()))  # resolves "./", "//" and a trailing "/"
    return cleaned.lstrip("/") or "."


def _regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + "[" + pattern[i + 1:end].replace("!", "^", 1) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


@dataclass(frozen=True)
class DockerIgnore:
    rules: tuple[tuple[bool, re.Pattern[str], str], ...]  # (is_exception, regex, original pattern)

    @classmethod
    def read(cls, path: Path) -> DockerIgnore:
        rules = []
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = _clean(line[1:] if negate else line)
            rules.append((negate, _regex(pattern), pattern))
        return cls(tuple(rules))

    def excluded(self, path: str) -> bool:
        """Whether ``path`` (relative to the context root) stays out of the build context."""
        parts = PurePosixPath(_clean(path)).parts
        candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]  # the path and each parent folder
        excluded = False
        for negate, regex, _ in self.rules:
            if any(regex.match(c) for c in candidates):
                excluded = not negate
        return excluded
