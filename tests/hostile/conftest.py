"""Fixtures of the hostile-input suite, and the end-of-run table of what was tried."""

from __future__ import annotations

import pytest
import pytest_asyncio
from hostile_support import ANSWERS, API_TOKENS, EXAMPLES, asgi_client


@pytest_asyncio.fixture(loop_scope="session")
async def secured(make_app):
    """The real app with bearer tokens configured, on the test transaction."""
    async with asgi_client(make_app(api_tokens=API_TOKENS)) as client:
        yield client


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not EXAMPLES:
        return
    write = terminalreporter.write_line
    terminalreporter.section("hostile input: examples run and the answers they got")
    width = max(len(attack) for attack in EXAMPLES)
    for attack in sorted(EXAMPLES):
        answers = ", ".join(f"{answer}×{n}" for answer, n in sorted(ANSWERS[attack].items()))
        write(f"{attack:<{width}}  {EXAMPLES[attack]:>5}  {answers}")
    write(f"{'total':<{width}}  {sum(EXAMPLES.values()):>5}")
