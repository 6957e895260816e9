"""One way to say "the cache failed, carrying on without it", for every caller that can."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from workerlib.errors import Forbidden, KeychainConfigError, KeychainError, Unauthorized

_CONFIGURATION_PROBLEMS = {
    Unauthorized: "KEYCHAIN_API_TOKEN is missing or unknown to the keychain server",
    Forbidden: "KEYCHAIN_API_TOKEN's role may not do this",
    KeychainConfigError: "the keychain client cannot be built from this configuration",
}


def cache_failed(
    logger: logging.Logger, what: str, exc: KeychainError, context: Mapping[str, Any]
) -> None:
    """Log `what` happened because of `exc`, marked degraded.

    Names the error class and, through str(exc), the server's own detail; never a value.
    A refused token or an unusable setting is an ERROR, not a warning: the step still runs, but
    every step of every worker so configured runs without the cache until someone fixes it.
    """
    extra = {**context, "degraded": True, "error_class": type(exc).__name__}
    problem = next(
        (text for cls, text in _CONFIGURATION_PROBLEMS.items() if isinstance(exc, cls)), None
    )
    if problem:
        logger.error(
            "%s (degraded; %s): %s: %s", what, problem, type(exc).__name__, exc, extra=extra
        )
    else:
        logger.warning("%s (degraded): %s: %s", what, type(exc).__name__, exc, extra=extra)
