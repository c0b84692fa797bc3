"""Chunking long documents, before and after, side by side in one process on the bundled model's tokenizer.

Before: the greedy packing this project used until this benchmark was added (paragraphs, then sentences,
then words; every candidate chunk re-tokenized as it grows), reproduced below. After: `text/chunk.py`
(tokenize once, cut by offsets at the best boundary). Both on the same generated texts: web-like English
(paragraphs of 1 to 12 sentences, some lines of links and a long base64-like run), one paragraph with no
blank line, the same with no sentence ends or line breaks, and CJK text with no spaces. Per text and method:
the characters handed to the tokenizer over the text's length (read amplification), wall seconds, chunks, the
largest chunk in tokens against the limit.

    .venv/bin/python benchmarks/chunking.py [--chars 200000] [--max-tokens 512]

Prints `RESULT text=<kind> method=<before|after> amplification=<x> wall_s=<s> chunks=<n> max_chunk_tokens=<n>
limit=<n>` per pair.
"""

from __future__ import annotations

import argparse
import random
import re
import time


def web_text(rng: random.Random, chars: int) -> str:
    words = [w for w in ("the of and to in is was for on that with as by at from his an were are which this be "
                         "has had one their its first after new who they have her she two been other when there "
                         "all during into school time may years more most only over city some world would where "
                         "later up such used many can state about national out known university united then "
                         "made").split()]
    paras: list[str] = []
    size = 0
    while size < chars:
        kind = rng.random()
        if kind < 0.05:
            para = "\n".join(f"https://example.org/{rng.randrange(10**9)}/{'x' * rng.randrange(5, 60)}"
                             for _ in range(rng.randrange(3, 12)))
        elif kind < 0.07:
            para = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
                           for _ in range(rng.randrange(2000, 6000)))
        else:
            para = " ".join(" ".join(rng.choice(words) for _ in range(rng.randrange(6, 30))).capitalize() + "."
                            for _ in range(rng.randrange(1, 13)))
        paras.append(para)
        size += len(para) + 2
    return "\n\n".join(paras)


def one_paragraph(rng: random.Random, chars: int) -> str:
    return web_text(rng, chars).replace("\n\n", " ").replace("\n", " ")


def no_sentences(rng: random.Random, chars: int) -> str:
    """Scraped text with no sentence ends and no line breaks (lists, tag clouds): only spaces to cut at."""
    return re.sub(r"[.!?\n]", " ", web_text(rng, chars))


def cjk_text(rng: random.Random, chars: int) -> str:
    pieces = ["東京は日本の首都です", "研究者は新しい方法を提案した", "この町には古い橋がある", "会議は三月に開かれた"]
    out, size = [], 0
    while size < chars:
        s = rng.choice(pieces) + "。"
        out.append(s)
        size += len(s)
    return "".join(out)


_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def split_by_tokens(text: str, max_tokens: int, count_tokens) -> list[str]:
    from ray_entigraph.text.chunk import head_within  # (unchanged: titles are still cut with it)

    pieces: list[str] = []
    while text:
        piece = head_within(text, max_tokens, count_tokens)
        pieces.append(piece)
        text = text[len(piece):]
    return pieces


def split_before(text: str, max_tokens: int, count_tokens) -> list[str]:
    """The greedy packing used before (reproduced for this comparison)."""
    if count_tokens(text) <= max_tokens:
        return [text]
    units: list[str] = []
    for para in [p for p in re.split(r"\n\s*\n", text) if p.strip()]:
        if count_tokens(para) <= max_tokens:
            units.append(para.strip())
            continue
        for sent in _SENTENCE.split(para.strip()):
            if count_tokens(sent) <= max_tokens:
                units.append(sent)
                continue
            cur: list[str] = []
            for w in sent.split():
                if cur and count_tokens(" ".join(cur + [w])) > max_tokens:
                    units.append(" ".join(cur))
                    cur = []
                cur.append(w)
                if len(cur) == 1 and count_tokens(w) > max_tokens:  # a "word" over the limit on its own
                    units.extend(split_by_tokens(w, max_tokens, count_tokens))
                    cur = []
            if cur:
                units.append(" ".join(cur))
    chunks: list[str] = []
    current: list[str] = []
    for unit in units:
        if current and count_tokens("\n\n".join(current + [unit])) > max_tokens:
            chunks.append("\n\n".join(current))
            current = [unit]
        else:
            current.append(unit)
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chars", type=int, default=200_000)
    ap.add_argument("--max-tokens", type=int, default=512)
    args = ap.parse_args()

    from ray_entigraph.engines.hf import load_tokenizer
    from ray_entigraph.text.chunk import split_document

    tok = load_tokenizer("bundled:smollm2-135m-instruct")
    seen = {"chars": 0}

    def count(s: str) -> int:
        seen["chars"] += len(s)
        return len(tok(s, add_special_tokens=False)["input_ids"])

    def offsets(s: str) -> list[tuple[int, int]]:
        seen["chars"] += len(s)
        return [tuple(o) for o in tok(s, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]

    rng = random.Random(0)
    texts = {"web": web_text(rng, args.chars), "one-paragraph": one_paragraph(rng, args.chars),
             "no-sentences": no_sentences(rng, args.chars),
             "cjk": cjk_text(rng, args.chars // 4)}
    for kind, text in texts.items():
        for method in ("before", "after"):
            seen["chars"] = 0
            started = time.perf_counter()
            if method == "before":
                chunks = split_before(text, args.max_tokens, count)
            else:
                chunks = split_document(text, args.max_tokens, offsets, count)
            wall = time.perf_counter() - started
            amplification = seen["chars"] / len(text)
            largest = max(len(tok(c, add_special_tokens=False)["input_ids"]) for c in chunks)
            print(f"RESULT text={kind} method={method} amplification={amplification:.2f} wall_s={wall:.2f} "
                  f"chunks={len(chunks)} max_chunk_tokens={largest} limit={args.max_tokens}", flush=True)


if __name__ == "__main__":
    main()
