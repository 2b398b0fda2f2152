"""Bearer-token authentication of the API, and the rule that keeps an exposed server from running without it.

With ``LEUKOLAB_API_TOKEN`` set, every route that reads the model or predicts (``/version``, ``/predict``,
``/predict/batch``, the v2 model and inference routes) wants ``Authorization: Bearer <token>`` and answers 401
otherwise. Liveness (``/``, ``/v2/health/live``), readiness (``/ready``, ``/v2/health/ready``), ``/metrics`` and
the OpenAPI page stay open: orchestrators, load balancers and Prometheus probe them without credentials, and they
answer only whether the process is up and aggregate counters, never a prediction, an image or the registry.

A server bound to an address other than loopback without a token refuses to start unless told ``--insecure``
(:func:`check_exposure`): anyone who can reach it could otherwise use it.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from leukolab.serving.errors import ApiError

TOKEN_VARIABLE = "LEUKOLAB_API_TOKEN"
"""Where the token comes from (``ServingSettings.api_token`` reads it)."""
bearer = HTTPBearer(auto_error=False, description="LEUKOLAB_API_TOKEN, when the server has one")


async def authorized(request: Request,
                     credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    """Nothing when the server has no token or the request carries it; else a 401."""
    token: str = request.app.state.settings.api_token
    if not token:
        return
    if credentials is None:
        raise ApiError(401, "this server needs a bearer token: send 'Authorization: Bearer <LEUKOLAB_API_TOKEN>'",
                       "unauthorized", headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
        raise ApiError(401, "the bearer token is not this server's", "unauthorized",
                       headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


Authorized = Depends(authorized)


def client_headers() -> dict[str, str]:
    """What a client of the API (the demo) sends: the bearer token of ``LEUKOLAB_API_TOKEN`` when it is set."""
    token = os.environ.get(TOKEN_VARIABLE)
    return {"Authorization": f"Bearer {token}"} if token else {}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) reaches this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str, insecure: bool) -> None:
    """Refuse (``SystemExit`` with the reason) to serve on a non-loopback ``host`` without a token, unless ``insecure``."""
    if token or insecure or is_loopback(host):
        return
    raise SystemExit(f"refusing to serve on {host} without a token: anyone who reaches it could use the model. Set "
                     "LEUKOLAB_API_TOKEN (clients send 'Authorization: Bearer <token>'), bind to 127.0.0.1, or pass "
                     "--insecure when something in front of the server already authenticates.")
