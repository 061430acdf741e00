"""Run the shell commands of a docs page as they stand, the way a reader types them, and report step by step.

A walkthrough section of a Markdown page is split into parts (its ``### N. ...`` subsections); the ``bash`` blocks
of the section before the first part are its preamble (e.g. activating the environment). A part runs in one
fresh ``bash`` process, preamble first, so ``export`` and background jobs (``&``, ``$!``, ``wait``) carry from one
command to the next as in a terminal. Each command must exit 0 unless its line ends with a comment
``# exits N``. A ``text`` block right after a ``bash`` block is the output the page shows for that block's last
command: each of its lines must appear in what the command printed.

The run happens in a stand-in for a fresh clone: a directory whose entries link to the repository's, without its
local state (``.storefront*``, ``.env``, ``data/``), next to a ``shared`` link, so ``../shared/...`` paths of the
page resolve as they do from the repository. Only a minimal environment reaches bash: the reader's PATH without
the project's virtualenv, HOME, locale, temporary directory and a config directory of the part's own
(``XDG_CONFIG_HOME``, where ``mlctl login`` keeps a reviewer's token); every other variable must come from the page.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.settings import PROJECT_ROOT

# Entries of the repository that hold a reader's local state: a fresh clone has none of them.
_LOCAL_STATE = re.compile(r"^(\.storefront.*|\.env|data|my-.*|serve\.log|.*\.log)$")
_EXIT_COMMENT = re.compile(r"#\s*exits\s+(\d+)\b")
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARK = "@@walkthrough"
_PASSED_ENV = ("HOME", "LANG", "LC_ALL", "TMPDIR", "TERM", "PYTHONDONTWRITEBYTECODE")


class WalkthroughError(AssertionError):
    """The page and the code disagree: a command failed, printed something else, or the page is malformed."""


@dataclass(frozen=True)
class Command:
    """One command of the page: its text (continuation lines included), where it is, the exit code expected."""

    text: str
    line: int
    expected_exit: int = 0


@dataclass
class Block:
    """A ``bash`` block and the ``text`` block (expected output of its last command) that may follow it."""

    commands: list[Command]
    shown_output: list[str] = field(default_factory=list)
    shown_line: int = 0


@dataclass
class Part:
    title: str
    blocks: list[Block]

    @property
    def commands(self) -> list[Command]:
        return [c for b in self.blocks for c in b.commands]


@dataclass
class StepResult:
    command: Command
    exit_code: int | None  # None: did not finish (the part timed out while it ran)
    output: str
    seconds: int | None  # wall-clock seconds it took (None: did not finish)


@dataclass
class PartRun:
    part: Part
    steps: list[StepResult]
    output: str
    seconds: float
    timed_out: bool

    def timings(self) -> str:
        """One line per command: seconds and the command (for the test's report of where time goes)."""
        return "\n".join(f"{s.seconds if s.seconds is not None else '?':>5} s  {s.command.text}" for s in self.steps)

    def output_of(self, fragment: str) -> str:
        """What the first command containing ``fragment`` printed (the page's commands are unique enough)."""
        for step in self.steps:
            if fragment in step.command.text:
                return step.output
        raise WalkthroughError(f"no command containing {fragment!r} ran in part {self.part.title!r}")


def _section(markdown: str, heading: str) -> tuple[str, int]:
    """The text of the ``## heading`` section and the line number (1-based) it starts on."""
    lines = markdown.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == f"## {heading}"]
    if len(starts) != 1:
        raise WalkthroughError(f"expected exactly one '## {heading}' heading, found {len(starts)}")
    start = starts[0]
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"^#{1,2} ", lines[i])), len(lines))
    return "\n".join(lines[start:end]), start + 1


def _commands(block_lines: list[str], first_line: int) -> list[Command]:
    """Logical commands of a bash block: blank and comment lines skipped, backslash continuations joined."""
    commands: list[Command] = []
    pending: list[str] = []
    pending_line = 0
    for offset, raw in enumerate(block_lines):
        if not pending and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if not pending:
            pending_line = first_line + offset
        pending.append(raw)
        if raw.rstrip().endswith("\\"):
            continue
        text = "\n".join(pending)
        found = _EXIT_COMMENT.search(pending[-1])
        commands.append(Command(text, pending_line, int(found.group(1)) if found else 0))
        pending = []
    if pending:
        raise WalkthroughError(f"line {pending_line}: a command ends with a backslash and nothing follows")
    return commands


def _blocks(text: str, first_line: int) -> list[tuple[str, list[str], int]]:
    """Fenced blocks of ``text`` as (language, lines, line number of the first content line)."""
    found: list[tuple[str, list[str], int]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opened = _FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise WalkthroughError(f"line {first_line + i}: a code block is never closed")
        found.append((opened.group(1), lines[i + 1 : end], first_line + i + 1))
        i = end + 1
    return found


def _bash_blocks(text: str, first_line: int) -> list[Block]:
    blocks: list[Block] = []
    previous_end_was_bash = False
    for language, lines, line in _blocks(text, first_line):
        if language == "bash":
            blocks.append(Block(_commands(lines, line)))
            previous_end_was_bash = True
        elif language == "text" and previous_end_was_bash and not blocks[-1].shown_output:
            blocks[-1].shown_output = [ln for ln in lines if ln.strip()]
            blocks[-1].shown_line = line
            previous_end_was_bash = False
        else:
            previous_end_was_bash = False
    return blocks


def parse_walkthrough(doc: Path, heading: str) -> tuple[list[Command], list[Part]]:
    """The preamble's commands and the numbered parts of the ``## heading`` section of ``doc``."""
    text, first_line = _section(doc.read_text(), heading)
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"^### \d+\. ", line)]
    if not starts:
        raise WalkthroughError(f"{doc}: section '{heading}' has no '### 1. ...' parts")
    preamble = [c for b in _bash_blocks("\n".join(lines[: starts[0]]), first_line) for c in b.commands]
    parts: list[Part] = []
    for start in starts:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("### ")), len(lines))
        body = "\n".join(lines[start:end])
        parts.append(Part(lines[start][4:].strip(), _bash_blocks(body, first_line + start)))
    return preamble, parts


def fresh_clone(root: Path) -> Path:
    """A stand-in for a fresh clone under ``root``: links to the repository's entries, none of its local state,
    and ``root/shared`` linking to the repository's ``../shared`` (the shared data the page refers to)."""
    clone = root / PROJECT_ROOT.name
    clone.mkdir(parents=True)
    for entry in sorted(PROJECT_ROOT.iterdir()):
        if not _LOCAL_STATE.match(entry.name):
            (clone / entry.name).symlink_to(entry)
    shared = PROJECT_ROOT.parent / "shared"
    if shared.exists():
        (root / "shared").symlink_to(shared)
    return clone


def reader_environment() -> dict[str, str]:
    """What a reader's new shell has: PATH without the project's virtualenv, HOME, locale, temporary dir."""
    venv = str(PROJECT_ROOT / ".venv" / "bin")
    active = os.environ.get("VIRTUAL_ENV")
    dropped = {venv, *([f"{active}/bin"] if active else [])}
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p not in dropped)
    env = {"PATH": path or "/usr/local/bin:/usr/bin:/bin"}
    env.update({k: os.environ[k] for k in _PASSED_ENV if k in os.environ})
    return env


def _script(commands: list[Command]) -> str:
    """A bash script that runs ``commands`` in order, marks where each starts and ends, and stops at the first
    command whose exit code is not the expected one."""
    out = ["exec 2>&1"]
    for i, command in enumerate(commands):
        out.append(f"printf '\\n{_MARK} start {i}\\n'")
        out.append(command.text)
        out.append(f'__rc=$?; printf \'\\n{_MARK} end {i} %s %s\\n\' "$__rc" "$SECONDS"')
        out.append(f'[ "$__rc" -eq {command.expected_exit} ] || exit 97')
    out.append(f"printf '\\n{_MARK} done\\n'")
    return "\n".join(out) + "\n"


def _split(output: str, commands: list[Command]) -> list[StepResult]:
    steps: list[StepResult] = []
    pattern = re.compile(rf"^{_MARK} (start|end) (\d+)(?: (\d+) (\d+))?$", re.MULTILINE)
    current, begun, clock = None, 0, 0
    for mark in pattern.finditer(output):
        kind, index = mark.group(1), int(mark.group(2))
        if kind == "start":
            current, begun = index, mark.end()
        elif current == index:
            seconds = int(mark.group(4)) - clock
            clock = int(mark.group(4))
            text = output[begun : mark.start()].strip("\n")
            steps.append(StepResult(commands[index], int(mark.group(3)), text, seconds))
            current = None
    if current is not None:
        steps.append(StepResult(commands[current], None, output[begun:].strip("\n"), None))
    return steps


def run_part(clone: Path, preamble: list[Command], part: Part, timeout: float) -> PartRun:
    """Run the preamble and ``part`` in one new bash process in ``clone``; kill whatever is left at the end."""
    commands = [*preamble, *part.commands]
    slug = re.sub(r"[^a-z0-9]+", "-", part.title.lower()).strip("-")
    log = clone.parent / f"walkthrough-{slug}.log"
    # Each part is a reader of their own: a config dir of their own keeps the reviewer logins (`mlctl login`) of
    # parts running side by side apart, and out of the tester's ~/.config.
    env = {**reader_environment(), "XDG_CONFIG_HOME": str(clone.parent / f"config-{slug}")}
    started = time.monotonic()
    timed_out = False
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            ["bash", "-c", _script(commands)],
            cwd=clone,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # Background jobs of the page (a server, a training run) share the part's session: end them all.
            # SIGKILL: an in-process Airflow run ignores SIGTERM.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = log.read_text(errors="replace")
    return PartRun(part, _split(output, commands), output, time.monotonic() - started, timed_out)


def _normal(text: str) -> str:
    return " ".join(text.split())


def check_part(run: PartRun, preamble_size: int) -> None:
    """Raise WalkthroughError naming the first command that failed (or printed other than the page shows)."""
    commands = run.part.commands
    page_steps = run.steps[preamble_size:]
    for step in run.steps:
        if step.exit_code is None or step.exit_code != step.command.expected_exit:
            state = "did not finish (timed out)" if step.exit_code is None else f"exited {step.exit_code}"
            raise WalkthroughError(
                f"part {run.part.title!r}, doc line {step.command.line}: `{step.command.text}` {state}, "
                f"expected exit {step.command.expected_exit}; its output ends with:\n{step.output[-4000:]}"
            )
    if len(page_steps) != len(commands):
        raise WalkthroughError(
            f"part {run.part.title!r}: {len(page_steps)} of {len(commands)} commands ran"
            f"{' (timed out)' if run.timed_out else ''}; output ends with:\n{run.output[-4000:]}"
        )
    by_command = {id(s.command): s for s in page_steps}
    for block in run.part.blocks:
        if not block.shown_output or not block.commands:
            continue
        printed = _normal(by_command[id(block.commands[-1])].output)
        for line in block.shown_output:
            if _normal(line) not in printed:
                raise WalkthroughError(
                    f"part {run.part.title!r}, doc line {block.shown_line}: the page shows\n  {line.strip()}\n"
                    f"but `{block.commands[-1].text}` printed:\n{by_command[id(block.commands[-1])].output[-4000:]}"
                )
