"""API token format: `stk_` + 40 base62 characters of randomness + 6 base62
characters of CRC32 checksum (50 characters in all), e.g.

    stk_AbCdEfGh 0123456789abcdefghijklmnopqrstuv Q1w2E3
    '-lookup---' '-secret, 32 chars--------------' 'crc32'

- The typed prefix lets secret scanners find leaked tokens (`stk_` + 46 base62).
- The first 8 random characters, with `stk_`, are the non-secret lookup prefix
  shown in the admin and in logs (`stk_AbCdEfGh`). The other 32 carry
  log2(62**32) ~ 190 bits that are never shown again, so the secret part alone
  is above the 160-bit floor even though the lookup prefix is public.
- The checksum lets us reject a mistyped or forged token before any database
  query or cache access (GitHub's format works the same way). CRC32 catches
  every single-character typo and every swap of two neighbouring characters.
- Only the SHA-256 digest of the whole token is stored: a slow KDF adds
  nothing for 190 random bits, and a fast digest keeps connects cheap.
"""

import hashlib
import secrets
import string
import zlib

PREFIX = "stk_"
ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
BODY_LEN = 40
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
    """True if `raw` has the right shape and checksum. No I/O, any input
    (the length is checked first, so a 10 KB string costs nothing)."""
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
