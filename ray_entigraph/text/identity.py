"""Stable identities: document ids, request keys, and seeds derived from them.

Everything that determines a request's output distribution goes into its key, so the same key means the same
request (done once) and a changed prompt version, model or sampling setting gives a new key.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any

# Strings that chat templates and tokenizers treat as control tokens: ChatML / Llama 3 style `<|...|>`, and
# the common SentencePiece, Mistral and Gemma markers. In a document they are text; left as they are, a
# server-side tokenizer (or a chat template) would turn them into real turns or real end-of-text tokens.
SPECIAL_TOKEN_PATTERN = re.compile(
    r"<\|[^|<>\s]{1,64}\|>|</?s>|<unk>|<pad>|<bos>|<eos>|\[/?INST\]|<start_of_turn>|<end_of_turn>")
_WORD_JOINER = "\u2060"  # invisible and not a control token: "<|im_end|>" -> "<\u2060|im_end|>"


def neutralise_special_tokens(text: str) -> str:
    """Break every special-token string in `text` with an invisible word joiner after its first character,
    so that no tokenizer reads it as a control token; the text looks the same to a reader."""
    return SPECIAL_TOKEN_PATTERN.sub(lambda m: m.group(0)[0] + _WORD_JOINER + m.group(0)[1:], text)


def normalise_text(text: str) -> str:
    """NFC, unified newlines, stripped trailing whitespace per line, no leading/trailing blank lines, and
    special-token strings neutralised (documents are text, never chat turns or end-of-text tokens)."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = neutralise_special_tokens(text)
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


# Ids are 128-bit hashes: at 10^9 requests the chance that any two collide is about 10^-21 (60-bit ids gave
# about 35%, and a collision silently skips a request).
ID_BYTES = 16


def _digest(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    return hashlib.blake2b(blob, digest_size=ID_BYTES).hexdigest()


def doc_id_for(text: str) -> str:
    """A document's id: "d" + a 128-bit hash of its normalised text and nothing else."""
    return "d" + hashlib.blake2b(normalise_text(text).encode(), digest_size=ID_BYTES).hexdigest()


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
    """The request key (`task_id`): "t" + a 128-bit hash of everything that determines the output distribution."""
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
    )


def derive_seed(run_seed: int, *parts: str | int) -> int:
    """A 63-bit seed from (run seed, doc_id, kind, ...): never from worker order or time."""
    blob = json.dumps([run_seed, *parts]).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "big") >> 1
