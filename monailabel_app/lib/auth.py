"""MONAI Label's token check, made to accept the tokens its own realm issues: MONAI Label 0.8.5 calls
``jwt.decode`` without ``algorithms``, which PyJWT 2 refuses, so every valid Keycloak (RS256) token was a
401; and an unreachable realm was a 500. The launcher installs :func:`from_token` in place of MONAI Label's;
everything else (roles, claims, the public key cache) stays MONAI Label's."""

from __future__ import annotations

import jwt
import requests
from fastapi import HTTPException
from monailabel.config import settings
from monailabel.endpoints.user import auth

#: what a Keycloak realm signs access tokens with
ALGORITHMS = ["RS256"]


def from_token(token: str) -> auth.User:
    """The user a token names, its signature checked against the realm's public key with :data:`ALGORITHMS`
    only; a realm that cannot be reached is a 503 (retry later), a bad token MONAI Label's 401."""
    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return auth.DEFAULT_USER
    try:
        key = auth.get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
    except (requests.RequestException, ValueError, KeyError) as e:
        raise HTTPException(
            503, "the sign-in service cannot be reached to check the token; retry later.", {"Retry-After": "30"}
        ) from e
    payload = jwt.decode(token, key, algorithms=ALGORITHMS, options={"verify_aud": False, "verify_exp": True})
    roles, claims = payload, settings.MONAI_LABEL_AUTH_TOKEN_ROLES.split("#")
    for claim in claims:
        roles = roles.get(claim) if isinstance(roles, dict) else None
    return auth.User(
        username=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME),
        email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
        name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME),
        roles=list(roles or []),
    )


def install() -> None:
    """Use :func:`from_token` for every route's token check (MONAI Label's ``get_current_user`` calls it)."""
    auth.from_token = from_token
