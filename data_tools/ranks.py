"""Hash ranks: the number u = hash(key, salt) in [0, 1) that orders every sample.

A subset of fraction f is {u < f}; shards are written in increasing u. The
rank must therefore be identical on every machine, Python version and input
order, so it is a plain cryptographic hash (blake2b) of the salt and the key,
never Python's randomised ``hash()``.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
import unicodedata
from typing import Iterable

import numpy as np

DEFAULT_SALT = "datascale"
# The top 53 bits of the digest: exactly representable as float64, so the
# rank is exact and strictly below 1.0 (64 bits / 2**64 can round up to 1.0).
_SHIFT = 11
_SCALE = 2.0 ** -53
# Letters and digits of any script are kept (``\w`` is Unicode-aware); what else a
# key may not hold (dots, spaces, punctuation) is replaced.
_KEY_UNSAFE = re.compile(r"[^\w\-/]")
_HASH_SEP = "~"          # never produced by the replacement above, so hashed keys stay apart
_KEY_MAX_BYTES = 200     # with ".jpeg", fits the 255-byte name+prefix of a USTAR tar member


def _digest(key: str, salt: str) -> bytes:
    # The NUL separator keeps ("ab", "c") and ("a", "bc") apart.
    return hashlib.blake2b(f"{salt}\x00{key}".encode("utf-8"), digest_size=8).digest()


def sample_rank(key: str, salt: str = DEFAULT_SALT) -> float:
    """The hash rank of one sample key, a float in [0, 1).

    Inputs: the sample key and the collection's salt. Output: the top 53 bits
    of blake2b-64(salt NUL key), divided by 2**53. O(len(key)) time.
    """
    return (int.from_bytes(_digest(key, salt), "big") >> _SHIFT) * _SCALE


def sample_ranks(keys: Iterable[str], salt: str = DEFAULT_SALT) -> np.ndarray:
    """Vectorised :func:`sample_rank`: float64 array, one rank per key, same values.

    Hashing is a Python loop over hashlib (about 1 µs a key); the conversion
    to floats is one numpy operation. Memory: 16 bytes a key.
    """
    digests = b"".join(_digest(k, salt) for k in keys)
    words = np.frombuffer(digests, dtype=">u8").astype(np.uint64)
    return (words >> np.uint64(_SHIFT)).astype(np.float64) * _SCALE


def sanitize_key(text: str) -> str:
    """A WebDataset-safe sample key from a path-like string, unique and stable for any name.

    WebDataset splits a member name at the first dot of its base name, so a
    key must hold no dot; spaces and punctuation are replaced too so that
    keys survive every tar tool. Letters and digits of every script are kept
    (NFC-normalised): ``猫/001`` stays ``猫/001``. A name that had to change
    gets ``~`` and a short hash of the original text appended, so two names
    that sanitise alike (``a b`` and ``a_b``, NFC and NFD forms) still get
    distinct keys: a duplicate key then always means a repeated input name.
    A name too long for a tar member is cut and hashed the same way.
    """
    normal = unicodedata.normalize("NFC", text)
    key = re.sub(r"/+", "/", _KEY_UNSAFE.sub("_", normal.replace("\\", "/"))).strip("/") or "_"
    if key == text and _fits_tar(key):
        return key
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()
    while not _fits_tar(f"{key}{_HASH_SEP}{digest}"):
        key = key[: max(1, len(key) - 8)]
    return f"{key}{_HASH_SEP}{digest}"


def _fits_tar(key: str) -> bool:
    """True when ``KEY.jpeg`` fits a USTAR member name (100 bytes, or prefix/name split at a /)."""
    size = len(key.encode("utf-8"))
    if size <= 95:
        return True
    if size > _KEY_MAX_BYTES:
        return False
    try:
        tarfile.TarInfo(key + ".jpeg").tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
        return True
    except ValueError:
        return False
