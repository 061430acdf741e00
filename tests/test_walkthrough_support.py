"""The runner of docs walkthroughs (tests/walkthrough_support.py) fails when a page and its commands disagree."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.walkthrough_support import WalkthroughError, check_part, parse_walkthrough, run_part

PAGE = """# A page

## Try it

Intro.

```bash
export GREETING=hello
```

### 1. Say it

```bash
echo "$GREETING world"
test -z "$STOREFRONT_HOME"   # nothing the page does not set reaches the commands
false   # exits 1
echo "the end: $GREETING" \\
  "(continued)"
```

```text
the end: hello (continued)
```

### 2. Leave a job behind

```bash
sleep 300 &
echo "job $!"
```

### Not a part

```bash
echo never run
```

## Next section
"""


def _page(tmp_path: Path, text: str = PAGE) -> Path:
    page = tmp_path / "page.md"
    page.write_text(text)
    return page


def test_parts_preamble_exit_codes_and_shown_output_are_read_from_the_page(tmp_path: Path) -> None:
    preamble, parts = parse_walkthrough(_page(tmp_path), "Try it")
    assert [c.text for c in preamble] == ["export GREETING=hello"]
    assert [p.title for p in parts] == ["1. Say it", "2. Leave a job behind"]
    commands = parts[0].commands
    assert [c.expected_exit for c in commands] == [0, 0, 1, 0]
    assert commands[3].text.endswith('"(continued)"') and commands[3].line == 17
    assert parts[0].blocks[0].shown_output == ["the end: hello (continued)"]


def test_a_part_runs_in_one_shell_without_the_callers_settings(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("STOREFRONT_HOME", str(tmp_path / "not-for-the-page"))
    preamble, parts = parse_walkthrough(_page(tmp_path), "Try it")
    run = run_part(tmp_path, preamble, parts[0], timeout=60)
    check_part(run, len(preamble))
    assert run.output_of("world") == "hello world"


def test_a_command_that_exits_otherwise_than_the_page_says_is_named_with_its_line(tmp_path: Path) -> None:
    page = _page(tmp_path, PAGE.replace("false   # exits 1", "false"))
    preamble, parts = parse_walkthrough(page, "Try it")
    run = run_part(tmp_path, preamble, parts[0], timeout=60)
    with pytest.raises(WalkthroughError, match=r"doc line 16: `false` exited 1, expected exit 0"):
        check_part(run, len(preamble))


def test_output_the_page_shows_but_the_command_does_not_print_fails(tmp_path: Path) -> None:
    page = _page(tmp_path, PAGE.replace("the end: hello (continued)\n```", "the end: goodbye\n```"))
    preamble, parts = parse_walkthrough(page, "Try it")
    run = run_part(tmp_path, preamble, parts[0], timeout=60)
    with pytest.raises(WalkthroughError, match=r"the page shows\n  the end: goodbye"):
        check_part(run, len(preamble))


def test_jobs_a_part_leaves_in_the_background_are_ended(tmp_path: Path) -> None:
    preamble, parts = parse_walkthrough(_page(tmp_path), "Try it")
    run = run_part(tmp_path, preamble, parts[1], timeout=60)
    check_part(run, len(preamble))
    pid = int(run.output_of("echo").split()[-1])
    # SIGKILL is delivered asynchronously: give the kernel a moment before looking.
    deadline = time.monotonic() + 10
    while not _ended(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _ended(pid), f"the page's background job {pid} still runs"


def _ended(pid: int) -> bool:
    """Gone, or a zombie waiting for whoever adopted it to reap it (it runs no more either way)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
