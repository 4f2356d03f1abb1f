"""MkDocs hook: "```python norun" (an example the docs test skips) becomes a fence that
Markdown renders as Python. See tests/test_docs.py for the convention."""

from __future__ import annotations

import re
from typing import Any

_NORUN = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]+)\s+norun\s*$", re.MULTILINE)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return _NORUN.sub(r"\1\2 { .\3 .norun }", markdown)
