"""Bearer tokens for both transports (``--auth-token-file``): one token a line, reloaded on SIGHUP.

A presented token is hashed and compared with every known token's hash with ``hmac.compare_digest``, without
stopping at a match: the time a check takes does not depend on how much of a token was right, nor on which token
matched. Health checks stay open (load balancers and Kubernetes probes carry no token); see the front ends.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

from serving.errors import Unauthenticated

log = logging.getLogger(__name__)

HEADER = "authorization"
SCHEME = "bearer"
REFUSED = "missing or invalid token: send the header 'authorization: Bearer <token>'"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def read_tokens(path: Path) -> tuple[bytes, ...]:
    """The hashes of the tokens in ``path``; blank lines and ``#`` comments are skipped. ``ValueError`` if none."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the token file {path}: {getattr(e, 'strerror', None) or e}") from None
    tokens = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not tokens:
        raise ValueError(f"the token file {path} holds no token (one a line)")
    return tuple(_digest(t) for t in tokens)


class Tokens:
    """The accepted tokens; ``check(header)`` raises ``Unauthenticated`` unless the header carries one of them."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._digests = read_tokens(self.path)

    def __len__(self) -> int:
        return len(self._digests)

    def reload(self) -> None:
        """Read the file again; a file that became unreadable or empty keeps the previous tokens (logged)."""
        try:
            self._digests = read_tokens(self.path)
        except ValueError as e:
            log.error("%s; keeping the %d tokens read before", e, len(self._digests))
            return
        log.info("token file reloaded: %d tokens", len(self._digests))

    def allows(self, header: str | None) -> bool:
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != SCHEME or not token.strip():
            return False
        presented = _digest(token.strip())
        matched = False
        for known in self._digests:  # every one, always: no early exit
            matched |= hmac.compare_digest(known, presented)
        return matched

    def check(self, header: str | None) -> None:
        if not self.allows(header):
            raise Unauthenticated(REFUSED)
