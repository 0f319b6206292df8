"""Bearer tokens for both transports (``--auth-token-file``), each naming the client it belongs to; reloaded on SIGHUP.

The file holds one token a line, optionally followed by the client's name: ``TOKEN`` or ``TOKEN NAME`` (blank
lines are skipped, and a ``#`` starts a comment). The name is the client's *identity*: what it owns on the server (its
shared-memory regions) and what a fair share is counted in. Several tokens may name the same client (a token being
rotated); a token without a name gets an identity derived from its hash (``token:`` and 12 hex digits), stable
across restarts and reloads, which is never the token itself. With tokens off, every caller is :data:`ANONYMOUS`.

A presented token is hashed and compared with every known token's hash with ``hmac.compare_digest``, without
stopping at a match: the time a check takes does not depend on how much of a token was right, nor on which token
matched. Health checks stay open (load balancers and Kubernetes probes carry no token); see the front ends. A front
end that accepted a call sets :data:`client_var` to the caller's identity for the data plane to read.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from contextvars import ContextVar
from pathlib import Path

from serving.errors import Unauthenticated

log = logging.getLogger(__name__)

HEADER = "authorization"
SCHEME = "bearer"
REFUSED = "missing or invalid token: send the header 'authorization: Bearer <token>'"
ANONYMOUS = "anonymous"  # every caller's identity when the server wants no token
# A name starts with a letter or digit; ':' is left out so that no name can equal a derived identity.
CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")

# The identity of the client whose request is being handled (set by the front ends, read by the data plane).
client_var: ContextVar[str] = ContextVar("client", default=ANONYMOUS)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def derived_identity(token: str) -> str:
    """The identity of a token that names no client: a short hash, domain-separated from the comparison hash."""
    return "token:" + hashlib.sha256(b"serving client identity\0" + token.encode()).hexdigest()[:12]


def read_tokens(path: Path) -> tuple[tuple[bytes, str], ...]:
    """(hash of the token, the client's identity) for each token in ``path``. ``ValueError`` if there is none, or
    a line is malformed (named by its number: the message never quotes a token)."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the token file {path}: {getattr(e, 'strerror', None) or e}") from None
    found: dict[bytes, tuple[int, str]] = {}
    for number, line in enumerate(lines, 1):
        words = line.split()
        words = words[:next((i for i, w in enumerate(words) if w.startswith("#")), len(words))]  # a comment ends it
        if not words:
            continue
        if len(words) > 2:
            raise ValueError(f"the token file {path}, line {number}: {len(words)} words; write TOKEN or TOKEN NAME")
        if len(words) == 2 and not CLIENT_NAME.fullmatch(words[1]):
            raise ValueError(f"the token file {path}, line {number}: a client name is 1-64 letters, digits, '.', "
                             "'_', '@' or '-', starting with a letter or digit")
        digest = _digest(words[0])
        if digest in found:
            raise ValueError(f"the token file {path}, line {number}: the same token as line {found[digest][0]}")
        found[digest] = (number, words[1] if len(words) == 2 else derived_identity(words[0]))
    if not found:
        raise ValueError(f"the token file {path} holds no token (one a line: TOKEN or TOKEN NAME)")
    return tuple((digest, identity) for digest, (_, identity) in found.items())


class Tokens:
    """The accepted tokens; ``check(header)`` returns the caller's identity, or raises ``Unauthenticated`` unless
    the header carries one of them."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._known = read_tokens(self.path)

    def __len__(self) -> int:
        return len(self._known)

    @property
    def clients(self) -> int:
        """How many distinct identities the tokens name."""
        return len({identity for _, identity in self._known})

    def reload(self) -> None:
        """Read the file again; a file that became unreadable, empty or malformed keeps the previous tokens (logged)."""
        try:
            self._known = read_tokens(self.path)
        except ValueError as e:
            log.error("%s; keeping the %d tokens read before", e, len(self._known))
            return
        log.info("token file reloaded: %d tokens, %d clients", len(self._known), self.clients)

    def identify(self, header: str | None) -> str | None:
        """The identity of the client whose token ``header`` carries (``Bearer <token>``), or None."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != SCHEME or not token.strip():
            return None
        presented = _digest(token.strip())
        identity = None
        for known, name in self._known:  # every one, always: no early exit
            if hmac.compare_digest(known, presented):
                identity = name
        return identity

    def allows(self, header: str | None) -> bool:
        return self.identify(header) is not None

    def check(self, header: str | None) -> str:
        """The caller's identity; ``Unauthenticated`` without a valid token."""
        identity = self.identify(header)
        if identity is None:
            raise Unauthenticated(REFUSED)
        return identity
