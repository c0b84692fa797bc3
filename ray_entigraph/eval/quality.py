"""QuALITY-layout questions: the public dataset's JSON Lines files and the demo corpus read the same way.

A record is one article: `article_id`, `title`, `author`, `year`, `article` (plain text or HTML) and
`questions[]`, each with `question`, four `options` and a 1-based `gold_label` (`difficult` optional); a
.json file may hold one array of such records instead. Anything that would be read wrongly (a line that is
not an object, `questions` or `options` not a list, fewer than 2 options, a gold label outside them) is a
`QuestionsError` naming the file and line. Pure functions; no model, no Ray.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass

from ray_entigraph import storage
from ray_entigraph.errors import QuestionsError
from ray_entigraph.inputs import json_lines, resolve_input_path

_TAG = re.compile(r"<[^>]+>")
_HIDDEN = re.compile(r"<(head|script|style)\b.*?</\1>", re.IGNORECASE | re.DOTALL)
_BLOCK_TAG = re.compile(r"</?(p|br|div|h[1-6]|li|tr|blockquote)\b[^>]*>", re.IGNORECASE)
_SPACES = re.compile(r"[ \t\r\f\v]+")
_BLANKS = re.compile(r"\n\s*\n+")


@dataclass(frozen=True)
class Question:
    qid: str  # <set_unique_id or article_id>/<index within the record> (QuALITY has several question sets per article)
    article_id: str
    title: str
    author: str
    year: str
    question: str
    options: tuple[str, ...]
    gold: int  # 0-based index into options
    difficult: bool
    article: str  # plain text (used only for the open-book reference)

    def header(self) -> str:
        """The closed-book prefix: the article's title (and author and year where present), as in the paper."""
        parts = [f'Title: "{self.title}"'] if self.title else []
        if self.author:
            parts.append(f"Author: {self.author}")
        if self.year:
            parts.append(f"Year: {self.year}")
        return "\n".join(parts)


def strip_html(text: str) -> str:
    """Plain text from QuALITY's HTML articles: block tags become paragraph breaks, entities are decoded."""
    if "<" not in text and "&" not in text:
        return text.strip()
    text = _BLOCK_TAG.sub("\n\n", _HIDDEN.sub("", text))
    text = html.unescape(_TAG.sub("", text)).replace("\xa0", " ")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def parse_records(lines: list[str], source: str = "<questions>") -> list[Question]:
    """Questions from QuALITY-layout JSON Lines; a malformed record is an error naming its line."""
    out: list[Question] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QuestionsError(f"{source}:{lineno}: not JSON ({exc.msg}). Fix: one JSON object per line.") from None
        out.extend(_record_questions(rec, f"{source}:{lineno}", f"line{lineno}"))
    return out


def parse_array(text: str, source: str = "<questions>") -> list[Question]:
    """Questions from a .json file holding one array of QuALITY records (the other layout `datasets` writes)."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise QuestionsError(f"{source}:{exc.lineno}: not JSON ({exc.msg}). Fix: a JSON array of QuALITY records, "
                             "or one record per line (JSON Lines).") from None
    return [q for i, rec in enumerate(items) for q in _record_questions(rec, f"{source} item {i}", f"item{i}")]


def _record_questions(rec: object, where_rec: str, fallback_id: str) -> list[Question]:
    """The questions of one QuALITY record; anything that would be read wrongly is an error naming it."""
    if not isinstance(rec, dict):
        raise QuestionsError(f"{where_rec}: a JSON {type(rec).__name__}, not an object. Fix: one QuALITY "
                             "record (a JSON object with `article` and `questions`) per line.")
    if not isinstance(rec.get("questions") or [], list):
        raise QuestionsError(f"{where_rec}: `questions` is a {type(rec['questions']).__name__}, not a list. "
                             "Fix: `questions` holds a list of {question, options, gold_label} objects.")
    article_id = str(rec.get("article_id") or rec.get("set_unique_id") or fallback_id)
    set_id = str(rec.get("set_unique_id") or article_id)
    article = strip_html(str(rec.get("article") or rec.get("text") or ""))
    out: list[Question] = []
    for i, q in enumerate(rec.get("questions") or []):
        where = f"{where_rec} question {i + 1}"
        if not isinstance(q, dict) or not isinstance(q.get("options") or [], list):
            raise QuestionsError(f"{where}: a question is an object whose `options` is a list of option texts. "
                                 "Fix: e.g. {\"question\": ..., \"options\": [\"a\", \"b\", \"c\", \"d\"], "
                                 "\"gold_label\": 1}.")
        raw = q.get("options") or []
        for k, o in enumerate(raw, 1):
            if isinstance(o, bool) or not isinstance(o, (str, int, float)) or not str(o).strip():
                raise QuestionsError(f"{where}: option {k} is {o!r}, not an option text. Fix: every option is a "
                                     "non-empty string.")
        options = tuple(str(o).strip() for o in raw)
        gold = q.get("gold_label")
        if len(options) < 2:
            raise QuestionsError(f"{where}: needs at least 2 options, has {len(options)}. Fix: give every question "
                                 "its answer options (QuALITY has 4).")
        if isinstance(gold, bool) or not isinstance(gold, int) or not 1 <= gold <= len(options):
            raise QuestionsError(f"{where}: gold_label {gold!r} is not a 1-based index into its "
                                 f"{len(options)} options. Fix: QuALITY labels are 1..{len(options)}.")
        out.append(Question(
            qid=f"{set_id}/{i}", article_id=article_id, title=str(rec.get("title") or ""),
            author=str(rec.get("author") or ""), year=str(rec.get("year") or ""),
            question=str(q.get("question", "")).strip(), options=options, gold=gold - 1,
            difficult=bool(q.get("difficult", False)), article=article,
        ))
    return out


def load_questions(url: str, max_questions: int | None = None) -> list[Question]:
    """Read a QuALITY-layout .jsonl, or a .json array of its records (local or any fsspec URL; `builtin:demo` is
    the demo corpus). Whatever would be read wrongly is a `QuestionsError` naming the file and line."""
    path = resolve_input_path(url)
    if not storage.exists(path):
        raise QuestionsError(f"Questions file {url!r} does not exist. Fix: set eval.questions to a QuALITY-layout "
                             "JSON Lines file (or `none` to skip question answering).")
    fs, fs_path = storage.filesystem(path)
    if fs.isdir(fs_path):
        raise QuestionsError(f"Questions file {url!r} is a folder. Fix: set eval.questions to one QuALITY-layout "
                             "JSON Lines file.")
    data = storage.read_bytes(path)
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise QuestionsError(f"{url}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}). Fix: "
                             "re-encode the file as UTF-8.") from None
    if path.lower().endswith(".json") and text.lstrip().startswith("["):
        questions = parse_array(text, source=url)
    else:
        _refuse_a_spread_object(text, url)
        questions = parse_records(json_lines(text), source=url)
    seen: set[str] = set()
    for q in questions:
        if q.qid in seen:
            raise QuestionsError(f"{url!r}: question id {q.qid!r} occurs twice. Fix: give every record a distinct "
                                 "set_unique_id (QuALITY's own files do).")
        seen.add(q.qid)
    if not questions:
        raise QuestionsError(f"{url!r} holds no questions (no record has a `questions` list). Fix: point "
                             "eval.questions at a QuALITY-layout file, or set eval.questions=none.")
    return questions[:max_questions] if max_questions else questions


def _refuse_a_spread_object(text: str, source: str) -> None:
    """One JSON object written over several lines (a pretty-printed file) is not JSON Lines: say so, instead of
    `line 1: not JSON`."""
    if not text.lstrip().startswith("{"):
        return
    try:
        json.loads(next(line for line in json_lines(text) if line.strip()))
        return
    except json.JSONDecodeError:
        pass
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        return
    if isinstance(whole, dict):
        raise QuestionsError(f"{source}:1: one JSON object spread over several lines, not one record per line. Fix: "
                             "write one QuALITY record per line (JSON Lines), or a .json array of records.")


def resolve_questions_url(eval_questions: str, input_path: str) -> str | None:
    """`auto`: the input itself when it is a single JSON Lines file holding questions; `none`: no QA."""
    if eval_questions == "none":
        return None
    if eval_questions != "auto":
        return eval_questions
    path = resolve_input_path(input_path)
    if not path.endswith((".jsonl", ".json")) or not storage.exists(path):
        return None
    fs, fs_path = storage.filesystem(path)
    with fs.open(fs_path, "rb") as f:
        first = f.readline()
    try:
        record = json.loads(first.decode("utf-8").removeprefix("\ufeff"))
    except (UnicodeDecodeError, json.JSONDecodeError):  # ingest records such a file; it holds no questions
        return None
    return input_path if isinstance(record, dict) and "questions" in record else None
