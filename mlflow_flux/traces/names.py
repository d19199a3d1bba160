"""Metric names MLflow accepts, from any layer or metric name.

MLflow refuses a whole ``log_batch`` for one bad key: a name with characters outside letters, digits, ``_ - . / :``
and space, one that ``posixpath.normpath`` would change (``a//b``, ``a/../b``, a leading ``/``), or one longer than
250 characters. Layer names come from module names and ``ModuleDict`` keys (``block[0]``), metric names from users
(``val acc%``), so every key we log goes through :class:`MetricNames` first. The mapping (docs/traces.md):

- a valid name is kept as it is;
- every other character becomes ``_``;
- empty path segments are dropped, and the segments ``.`` and ``..`` become ``_`` and ``__``;
- a name still longer than 250 characters keeps its first 241 and ends with ``-`` and 8 hex digits of its SHA-1.

The same name always maps to the same key. Two names that would share a key are refused with one error naming both.
"""

from __future__ import annotations

import hashlib
import posixpath
import re

from ..errors import FluxError

__all__ = ["MAX_KEY_LENGTH", "is_valid_key", "sanitize_key", "MetricNames"]

MAX_KEY_LENGTH = 250
_ALLOWED = re.compile(r"^[/\w.\- :]*$")
_NOT_ALLOWED = re.compile(r"[^/\w.\- :]")


def is_valid_key(name: str) -> bool:
    """Whether MLflow accepts ``name`` as a metric key as it is.

    >>> is_valid_key("flux/encoder.fc1/sos_median"), is_valid_key("flux/block[0]/sos_median"), is_valid_key("a//b")
    (True, False, False)
    """
    if not name or len(name) > MAX_KEY_LENGTH or not _ALLOWED.match(name):
        return False
    normal = posixpath.normpath(name)
    return normal == name and normal != "." and not normal.startswith(("..", "/"))


def sanitize_key(name: str) -> str:
    """The key MLflow accepts for ``name`` (the mapping in this module's docstring).

    >>> sanitize_key("flux/block[0]/sos_median"), sanitize_key("val acc%"), sanitize_key("/a//../b/")
    ('flux/block_0_/sos_median', 'val acc_', 'a/__/b')
    """
    if is_valid_key(name):
        return name
    key = _NOT_ALLOWED.sub("_", name)
    segments = [{".": "_", "..": "__"}.get(s, s) for s in key.split("/") if s]
    key = "/".join(segments) or "_"
    if len(key) > MAX_KEY_LENGTH:
        key = key[: MAX_KEY_LENGTH - 9] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return key


class MetricNames:
    """The keys of one run: each name maps to one key, and no two names to the same key."""

    def __init__(self) -> None:
        self._keys: dict[str, str] = {}
        self._owners: dict[str, str] = {}
        self.renamed: dict[str, str] = {}  # names that needed a new key, for the log and the docs

    def key(self, name: str) -> str:
        """The MLflow key for ``name``.

        Raises:
            FluxError: ``name`` is not a string, or another name already maps to the same key.
        """
        known = self._keys.get(name)
        if known is not None:
            return known
        if not isinstance(name, str):
            raise FluxError(f"metric names must be strings, got {name!r}")
        key = sanitize_key(name)
        owner = self._owners.get(key)
        if owner is not None and owner != name:
            raise FluxError(f"metric names {owner!r} and {name!r} would both be logged as {key!r} (MLflow allows "
                            "letters, digits, _ - . / : and space): rename one of them")
        self._keys[name] = key
        self._owners[key] = name
        if key != name:
            self.renamed[name] = key
        return key
