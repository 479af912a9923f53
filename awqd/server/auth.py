"""Bearer-token authorization of awq.v1.AwqdService calls.

Two tokens, each optional:
- the inference token (--auth-token) covers Describe, Generate and ListModels;
- the admin token (--admin-token) covers LoadModel, UnloadModel and Benchmark, and is accepted wherever the
  inference token is.
Without an admin token, the admin RPCs take the inference token; with neither, every call is open. Health and
reflection are always open: probes and tooling must work without secrets.
"""

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from awqd.errors import InvalidArgument, PermissionDenied, Unauthenticated
from awqd.server import SERVICE_NAME

ADMIN_METHODS = frozenset(f"/{SERVICE_NAME}/{name}" for name in ("LoadModel", "UnloadModel", "Benchmark"))
_BEARER = "bearer "


@dataclass(frozen=True, repr=False)  # repr=False: the tokens must never reach a log line
class Authorizer:
    auth_token: str = ""
    admin_token: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.auth_token or self.admin_token)

    def check(self, method: str, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        """Raises Unauthenticated or PermissionDenied; returns when the call may proceed."""
        if not method.startswith(f"/{SERVICE_NAME}/"):
            return
        admin = method in ADMIN_METHODS
        if not (self.auth_token or (admin and self.admin_token)):
            return
        token = _bearer_token(metadata)
        if token is None:
            raise Unauthenticated(f"authorization: {method} needs a bearer token ('authorization: Bearer <token>')")
        if admin and self.admin_token:
            if _same(token, self.admin_token):
                return
            if self.auth_token and _same(token, self.auth_token):
                raise PermissionDenied(f"authorization: {method} needs the admin token; this token allows inference")
            raise Unauthenticated(f"authorization: the bearer token is not valid for {method}")
        if not any(_same(token, accepted) for accepted in (self.auth_token, self.admin_token) if accepted):
            raise Unauthenticated(f"authorization: the bearer token is not valid for {method}")


def _bearer_token(metadata: Sequence[tuple[str, str | bytes]]) -> str | None:
    for key, value in metadata:
        if key == "authorization" and isinstance(value, str) and value[: len(_BEARER)].lower() == _BEARER:
            return value[len(_BEARER) :].strip()
    return None


def _same(given: str, expected: str) -> bool:
    # compare_digest takes time independent of where the strings differ; on bytes it also accepts non-ASCII.
    return hmac.compare_digest(given.encode(), expected.encode())


def resolve_token(flag: str, value: str | None, file: Path | None) -> str:
    """The token given directly or read from a file (trailing newline stripped); '' when neither is given."""
    if value and file:
        raise InvalidArgument(flag, f"give the token or {flag}-file, not both")
    if file is None:
        return value or ""
    try:
        token = file.read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidArgument(f"{flag}-file", f"cannot read {file}: {error}") from None
    if not token:
        raise InvalidArgument(f"{flag}-file", f"{file} is empty")
    return token
