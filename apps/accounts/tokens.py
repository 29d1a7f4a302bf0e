"""API token format: `stk_` + 32 base62 characters of randomness + 6 base62
characters of CRC32 checksum (42 characters in all).

- The typed prefix lets secret scanners find leaked tokens.
- 32 base62 characters carry log2(62**32) ~ 190 bits of randomness.
- The checksum lets us reject a mistyped or forged token before any database
  query (GitHub's format works the same way).
- The first 8 random characters, with the prefix, are the non-secret lookup
  prefix shown in the admin and in logs (`stk_AbCdEfGh`).
- Only the SHA-256 digest of the whole token is stored: a slow KDF adds
  nothing for 190 random bits.
"""

import hashlib
import secrets
import string
import zlib

PREFIX = "stk_"
ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
BODY_LEN = 32
CHECKSUM_LEN = 6
LOOKUP_LEN = len(PREFIX) + 8
TOKEN_LEN = len(PREFIX) + BODY_LEN + CHECKSUM_LEN
_ALPHABET_SET = frozenset(ALPHABET)


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        chars.append(ALPHABET[rem])
    return "".join(reversed(chars))


def checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LEN)


def generate() -> str:
    body = "".join(secrets.choice(ALPHABET) for _ in range(BODY_LEN))
    return PREFIX + body + checksum(body)


def is_well_formed(raw) -> bool:
    """True if `raw` has the right shape and checksum. No I/O, any input."""
    if not isinstance(raw, str) or len(raw) != TOKEN_LEN or not raw.startswith(PREFIX):
        return False
    rest = raw[len(PREFIX) :]
    if not _ALPHABET_SET.issuperset(rest):
        return False
    body, check = rest[:BODY_LEN], rest[BODY_LEN:]
    return secrets.compare_digest(checksum(body), check)


def lookup_prefix(raw: str) -> str:
    return raw[:LOOKUP_LEN]


def digest(raw: str) -> str:
    return hashlib.sha256(raw.encode("ascii")).hexdigest()
