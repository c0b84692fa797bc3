"""Stable identities: document ids, request keys, and seeds derived from them.

Everything that determines a request's output distribution goes into its key, so the same key means the same
request (done once) and a changed prompt version, model or sampling setting gives a new key.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from typing import Any


def normalise_text(text: str) -> str:
    """NFC, unified newlines, stripped trailing whitespace per line, no leading/trailing blank lines."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


def _digest(payload: Any, length: int = 16) -> str:
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()[:length]


def doc_id_for(text: str) -> str:
    """A document's id: a hash of its normalised text and nothing else."""
    return "d" + hashlib.blake2b(normalise_text(text).encode(), digest_size=16).hexdigest()[:15]


def request_key(
    *,
    doc_id: str,
    kind: str,
    entities: tuple[str, ...] | list[str],
    prompt_version: str,
    model: str,
    sampling: dict,
    seed: int,
) -> str:
    """The request key (`task_id`): a hash of everything that determines the output distribution."""
    return "t" + _digest(
        {
            "doc_id": doc_id,
            "kind": kind,
            "entities": list(entities),
            "prompt_version": prompt_version,
            "model": model,
            "sampling": sampling,
            "seed": seed,
        }
    )[:15]


def derive_seed(run_seed: int, *parts: str | int) -> int:
    """A 63-bit seed from (run seed, doc_id, kind, ...): never from worker order or time."""
    blob = json.dumps([run_seed, *parts]).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "big") >> 1
