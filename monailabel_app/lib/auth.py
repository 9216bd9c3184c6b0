"""MONAI Label's token check, made to accept the tokens its own realm issues: MONAI Label 0.8.5 calls
``jwt.decode`` without ``algorithms``, which PyJWT 2 refuses, so every valid Keycloak (RS256) token was a
401; and an unreachable realm was a 500. A token that could never pass (none, not a JWT, not RS256, unsigned,
expired, without ``exp``) is a 401 before the realm is asked for its key, so that a realm that is down turns
away no more than the tokens it alone could check (503). The launcher installs :func:`from_token` in place of
MONAI Label's; everything else (roles, claims, the public key cache) stays MONAI Label's."""

from __future__ import annotations

import jwt
import requests
from fastapi import HTTPException
from monailabel.config import settings
from monailabel.endpoints.user import auth

#: what a Keycloak realm signs access tokens with
ALGORITHMS = ["RS256"]


def check_form(token: str) -> None:
    """Raise :class:`jwt.InvalidTokenError` (MONAI Label's 401) for a token no realm key could accept: empty,
    not a JWT, signed with another algorithm than :data:`ALGORITHMS` or not at all, claims that are not an
    object, expired or without ``exp``. Reads the token only; the signature is checked by :func:`from_token`."""
    if not isinstance(token, str) or not token:
        raise jwt.InvalidTokenError("no token")
    if token.count(".") != 2 or not token.rsplit(".", 1)[1]:
        raise jwt.InvalidTokenError("not a signed JWT")
    if jwt.get_unverified_header(token).get("alg") not in ALGORITHMS:
        raise jwt.InvalidAlgorithmError(f"tokens are signed with {', '.join(ALGORITHMS)}")
    options = {"verify_signature": False, "verify_exp": True, "require": ["exp"]}
    jwt.decode(token, options=options, algorithms=ALGORITHMS)


def from_token(token: str) -> auth.User:
    """The user a token names, its signature checked against the realm's public key with :data:`ALGORITHMS`
    only; a bad token is MONAI Label's 401, decided before the realm is asked (:func:`check_form`), and a
    well-formed token when the realm cannot be reached a 503 (retry later), never accepted."""
    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return auth.DEFAULT_USER
    check_form(token)
    try:
        key = auth.get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
    except (requests.RequestException, ValueError, KeyError) as e:
        raise HTTPException(
            503, "the sign-in service cannot be reached to check the token; retry later.", {"Retry-After": "30"}
        ) from e
    options = {"verify_aud": False, "verify_exp": True, "require": ["exp"]}
    payload = jwt.decode(token, key, algorithms=ALGORITHMS, options=options)
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
