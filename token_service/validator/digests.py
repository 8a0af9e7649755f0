"""SHA-256 of what the validator remembers by digest: tokens, `Authorization` values, whole requests.

The digest keeps the token itself out of the validator's memory (docs/security.md). Compiled
(build.py, `digests.pxd`), it is OpenSSL's SHA-256 called directly: `hashlib` spends about 0.3 µs
a call before hashing a byte (it finds the algorithm by name and makes a context each time),
which is a third of an answer given again (docs/benchmarks.md, "Requests answered again by their
bytes"). As pure Python it is `hashlib`'s, with the same result.
"""

from __future__ import annotations

from hashlib import sha256

import cython

if cython.compiled:
    _open()  # noqa: F821  # digests.pxd: OpenSSL's SHA-256 and one context, made once


def sha256_digest(data: bytes) -> bytes:
    """The SHA-256 digest of `data` (32 bytes)."""
    if cython.compiled:
        return _openssl_sha256(data)  # noqa: F821  # digests.pxd, compiled only
    return sha256(data).digest()
