"""The documentation site: it builds with `mkdocs build --strict`, and its examples run.

Convention for code blocks in `docs/**/*.md` and `README.md`. Each page becomes one script,
run in a fresh process in an empty temporary folder, which must exit 0 without a traceback:

* a ```` ```python ```` block is copied into the script as it is, in page order, so a later
  block can use what an earlier one defined;
* a ```` ```python title="name.py" ```` block is a file the reader saves: the script writes
  it to `name.py` instead of running it;
* each line starting with `$ ` in a ```` ```console ```` block is run as a shell command at
  that point (with this interpreter's `bin/` first on PATH, so `roxxel` is the command of
  this checkout); it must exit 0, or N when the line ends with `# exit N`. The lines after it
  are sample output and are not compared;
* a block fenced ```` ```python norun ```` or ```` ```console norun ```` is shown but not
  run: use it for code that needs a cloud bucket, several hosts, or the reader's own model.
  (`docs/hooks.py` makes MkDocs render such fences as ordinary code.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_python

DOCS = REPO / "docs"
_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")


def _blocks(text: str) -> list[tuple[str, str]]:
    """`(info string, body)` of every fenced block, in order (indented fences included)."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, info = match["indent"], match["fence"], match["info"].strip()
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        blocks.append((info, "\n".join(body) + "\n"))
        i += 1
    return blocks


def _pages() -> list[Path]:
    return [*sorted(DOCS.rglob("*.md")), REPO / "README.md"]


_SHELL = """\
import subprocess as _docs_subprocess


def _docs_shell(command, expected):
    done = _docs_subprocess.run(
        command, shell=True, capture_output=True, text=True, timeout=120
    )
    print(f"$ {command}\\n{done.stdout}{done.stderr}")
    if done.returncode != expected:
        raise SystemExit(f"$ {command} exited {done.returncode}, expected {expected}")


"""
_TITLE = re.compile(r'^(python|py)\s+title="(?P<name>[\w./-]+)"$')
_EXIT = re.compile(r"#\s*exit\s+(\d+)\s*$")


def _script(text: str) -> str | None:
    """A page as one script (see the module docstring), or None if nothing in it runs."""
    parts = []
    blocks = _blocks(text)
    for info, body in blocks:
        title = _TITLE.match(info)
        if info in ("python", "py"):
            parts.append(body)
        elif title:
            parts.append(f"open({title['name']!r}, 'w').write({body!r})\n")
        elif info == "console":
            for line in body.splitlines():
                if line.startswith("$ "):
                    expected = _EXIT.search(line)
                    code = int(expected.group(1)) if expected else 0
                    parts.append(f"_docs_shell({line[2:]!r}, {code})\n")
    if not parts:
        return None
    return _SHELL + "\n".join(parts)


def _id(page: Path) -> str:
    return str(page.relative_to(REPO))


PAGES_WITH_EXAMPLES = [page for page in _pages() if _script(page.read_text()) is not None]


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=_id)
def test_examples_run(page: Path, tmp_path: Path) -> None:
    script = tmp_path / "_docs_example.py"
    script.write_text(_script(page.read_text()) or "")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    result = run_python(script, tmp_path, timeout=180, env={"PATH": path})
    assert result.returncode == 0, f"{_id(page)}:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr


def test_the_block_parser_sees_norun_and_indented_blocks() -> None:
    text = (
        "```python\na = 1\n```\n"
        "```python norun\nb = 2\n```\n"
        "  ```python\n  c = 3\n  ```\n"
        "```console\n$ roxxel ls x\noutput\n$ roxxel diff x  # exit 1\n```\n"
        '```python title="m.py"\nd = 4\n```\n'
    )
    blocks = _blocks(text)
    assert [info for info, _ in blocks] == [
        "python", "python norun", "python", "console", 'python title="m.py"'
    ]  # fmt: skip
    assert blocks[2][1] == "c = 3\n"
    body = (_script(text) or "")[len(_SHELL) :]
    assert body == (
        "a = 1\n\nc = 3\n\n_docs_shell('roxxel ls x', 0)\n\n"
        "_docs_shell('roxxel diff x  # exit 1', 1)\n\nopen('m.py', 'w').write('d = 4\\n')\n"
    )


def test_site_builds_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr
    api = (site / "api" / "index.html").read_text()
    # The API reference is generated from docstrings: a sentence of Checkpointer.save's.
    assert "returns without waiting" in api
    assert "roxxel.checkpoint.Checkpointer" in api
    # A "norun" block is rendered as code, not left as a stray fence.
    assert "```" not in (site / "guides" / "cli" / "index.html").read_text()


def test_every_page_is_in_the_nav() -> None:
    nav = (REPO / "mkdocs.yml").read_text()
    pages = [str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")]
    assert pages
    missing = [page for page in pages if f" {page}" not in nav]
    assert not missing, f"add these pages to the nav of mkdocs.yml: {missing}"


def test_api_page_documents_every_export() -> None:
    import roxxel.checkpoint

    api = (DOCS / "api.md").read_text()
    documented = set(re.findall(r"^::: roxxel\.checkpoint\.(\w+)", api, re.MULTILINE))
    missing = sorted(set(roxxel.checkpoint.__all__) - documented)
    assert not missing, f"add to docs/api.md: {[f'::: roxxel.checkpoint.{n}' for n in missing]}"
