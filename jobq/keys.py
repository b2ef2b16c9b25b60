"""API keys: what a key is, what it may do, and how its token is made and checked. Pure: no SQL,
no HTTP.

A token is ``jobq_<prefix>_<secret>``. The prefix (12 hex characters) is public: it names the
key in listings and is how a token's key is found. The secret is 32 random bytes (256 bits),
URL-safe base64. Only ``sha256(secret)`` is stored. A slow password hash (bcrypt, scrypt,
argon2) exists to make guessing a *low-entropy* secret expensive; a 256-bit random secret
cannot be guessed, so one fast hash loses nothing and keeps every request cheap.

Scopes: ``admin`` implies ``read`` and ``enqueue``; ``read`` and ``enqueue`` imply nothing else.
Queues: a list of queue names, or ``["*"]`` for every queue (also queues made later).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from jobq.errors import InvalidKeySpec
from jobq.types import NAME_PATTERN

TOKEN_PREFIX = "jobq_"
SECRET_BYTES = 32
ALL_QUEUES = "*"

ENQUEUE, READ, ADMIN = "enqueue", "read", "admin"
SCOPES = (ENQUEUE, READ, ADMIN)
#: What each scope grants, itself included.
_GRANTS = {ENQUEUE: {ENQUEUE}, READ: {READ}, ADMIN: {ADMIN, READ, ENQUEUE}}

MAX_NAME_LENGTH = 128

#: A token: jobq_<prefix>_<secret>. The prefix, its public part, is 6 random bytes as hex and
#: unique in the table.
_TOKEN = re.compile(r"^jobq_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class ApiKey:
    """One API key as stored (the secret itself is never stored, only its hash)."""

    id: int
    name: str
    prefix: str
    queues: tuple[str, ...]
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    secret_hash: str = field(repr=False)

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def all_queues(self) -> bool:
        return ALL_QUEUES in self.queues

    def grants(self, scope: str) -> bool:
        return any(scope in _GRANTS.get(s, ()) for s in self.scopes)

    def sees(self, queue: str) -> bool:
        return self.all_queues or queue in self.queues

    def matches(self, secret: str) -> bool:
        """Whether ``secret`` is this key's, compared in constant time."""
        return hmac.compare_digest(hash_secret(secret), self.secret_hash)


@dataclass(frozen=True)
class NewKey:
    """A key about to be created: checked on construction (raises InvalidKeySpec)."""

    name: str
    queues: tuple[str, ...]
    scopes: tuple[str, ...]

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_LENGTH or not (
            name.isprintable() and name.strip() == name
        ):
            raise InvalidKeySpec(
                f"name must be 1 to {MAX_NAME_LENGTH} printable characters, "
                "without leading or trailing spaces"
            )
        queues = tuple(dict.fromkeys(self.queues))
        if not queues:
            raise InvalidKeySpec("give at least one queue (or '*' for every queue)")
        if ALL_QUEUES in queues and len(queues) > 1:
            raise InvalidKeySpec("'*' means every queue; give it alone")
        for q in queues:
            if q != ALL_QUEUES and not re.fullmatch(NAME_PATTERN, q):
                raise InvalidKeySpec(f"{q!r} is not a valid queue name")
        scopes = tuple(s for s in SCOPES if s in self.scopes)
        unknown = sorted(set(self.scopes) - set(SCOPES))
        if unknown:
            raise InvalidKeySpec(
                f"unknown scope {unknown[0]!r}; scopes are {', '.join(SCOPES)}"
            )
        if not scopes:
            raise InvalidKeySpec(f"give at least one scope: {', '.join(SCOPES)}")
        object.__setattr__(self, "queues", queues)
        object.__setattr__(self, "scopes", scopes)


@dataclass(frozen=True)
class Token:
    prefix: str
    secret: str

    def __str__(self) -> str:
        return f"{TOKEN_PREFIX}{self.prefix}_{self.secret}"


def new_token() -> Token:
    return Token(prefix=secrets.token_hex(6), secret=secrets.token_urlsafe(SECRET_BYTES))


def parse_token(text: str) -> Token | None:
    """The token's parts, or None when ``text`` is not shaped like a jobq token."""
    m = _TOKEN.fullmatch(text)
    return Token(prefix=m.group(1), secret=m.group(2)) if m else None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def prefix_of(text: str) -> str:
    """A key's prefix from either the prefix itself or a whole token."""
    token = parse_token(text)
    return token.prefix if token else text
