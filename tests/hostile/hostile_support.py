"""Helpers shared by the hostile-input tests: tokens, a client factory, and a tally of what was tried.

The tally counts every generated example (schemathesis and hypothesis) and the answers it got;
conftest.py prints it at the end of the run, so the closing note's table comes from a real run.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict

from tests.conftest import BASE_URL, asgi_client  # noqa: F401 - the hostile tests import them from here

WORKER_TOKEN = "hostile-worker-token-6f1c2d9e"
ADMIN_TOKEN = "hostile-admin-token-0b7a4e31c8"
# The admin token is configured as a digest only, as the Helm chart does.
API_TOKENS = (
    f"ci-worker:worker:{WORKER_TOKEN},"
    f"ops:admin:sha256:{hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()}"
)

# attack -> number of examples run; attack -> Counter of answers (HTTP status or outcome).
EXAMPLES: Counter[str] = Counter()
ANSWERS: defaultdict[str, Counter[str]] = defaultdict(Counter)


def tally(attack: str, answer: object) -> None:
    EXAMPLES[attack] += 1
    ANSWERS[attack][str(answer)] += 1


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
