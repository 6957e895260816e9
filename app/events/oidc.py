"""Who pushed: the OIDC token Pub/Sub sends with every push, verified against Google's keys.

PyJWT's PyJWKClient fetches the JWKS (over urllib, so off the event loop here), keeps it for
JWKS_LIFESPAN_SECONDS and refetches it at most once per cooldown for a key id it does not know:
a stream of forged tokens with made-up key ids cannot make us hammer the JWKS URL.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import jwt
from jwt import PyJWKClient, PyJWKClientConnectionError

from app.auth import bearer_token
from app.errors import ConfigurationError, Unauthenticated, VerificationUnavailable
from app.settings import Settings

log = logging.getLogger(__name__)

# Google signs push tokens with either spelling of its issuer.
GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")
JWKS_LIFESPAN_SECONDS = 300
JWKS_TIMEOUT_SECONDS = 5
UNKNOWN_KEY_REFETCH_COOLDOWN_SECONDS = 30
# Clocks of Google's token service and of the pod may disagree by a few seconds.
LEEWAY_SECONDS = 30


class PushVerifier:
    """Verifies the bearer token of a Pub/Sub push: RS256 by a key of the JWKS, Google's
    issuer, our audience and, when configured, the subscription's service account."""

    def __init__(self, audience: str, jwks_url: str, service_account: str = "") -> None:
        self.audience = audience
        self.service_account = service_account
        try:
            self._keys = PyJWKClient(
                jwks_url,
                lifespan=JWKS_LIFESPAN_SECONDS,
                timeout=JWKS_TIMEOUT_SECONDS,
                cooldown_duration=UNKNOWN_KEY_REFETCH_COOLDOWN_SECONDS,
            )
        except jwt.PyJWKClientError as exc:
            raise ConfigurationError(f"KEYCHAIN_PUBSUB_JWKS_URL: {exc}") from None

    async def verify(self, authorization: str) -> str:
        """The pusher's identity (its service account, else the token's subject); raises
        Unauthenticated saying what is wrong, VerificationUnavailable if the keys cannot be had."""
        token = bearer_token(authorization)
        if not token:
            raise Unauthenticated(
                "no bearer token: Pub/Sub sends one when the push subscription has "
                "--push-auth-service-account"
            )
        return await asyncio.to_thread(self._verify, token)

    def _verify(self, token: str) -> str:
        try:
            key = self._keys.get_signing_key_from_jwt(token)
        except PyJWKClientConnectionError:
            raise VerificationUnavailable(
                "cannot fetch the token-signing keys (KEYCHAIN_PUBSUB_JWKS_URL); retry shortly"
            ) from None
        except jwt.PyJWTError:
            raise Unauthenticated(
                "push token is malformed or signed by a key the JWKS does not publish"
            ) from None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=self.audience,
                issuer=GOOGLE_ISSUERS,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("push token has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                "push token is for another audience than KEYCHAIN_PUBSUB_AUDIENCE"
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(
                "push token was not issued by Google (accounts.google.com)"
            ) from None
        except jwt.PyJWTError:
            raise Unauthenticated("push token's signature or claims do not verify") from None
        email = claims.get("email")
        if self.service_account and (
            email != self.service_account or claims.get("email_verified") is not True
        ):
            raise Unauthenticated(
                "push token is not for the service account KEYCHAIN_PUBSUB_SERVICE_ACCOUNT names"
            )
        return str(email or claims.get("sub") or "unknown")


def make_push_verifier(settings: Settings) -> PushVerifier | None:
    """None, and the endpoint answers 404, unless an audience is configured."""
    if not settings.pubsub_audience:
        return None
    if not settings.pubsub_service_account:
        log.warning(
            "Secret Manager events accept a token from ANY Google service account for audience %s: "
            "set KEYCHAIN_PUBSUB_SERVICE_ACCOUNT to the push subscription's service account",
            settings.pubsub_audience,
        )
    return PushVerifier(
        settings.pubsub_audience, settings.pubsub_jwks_url, settings.pubsub_service_account
    )
