"""Bad inputs, through the command line: this module backs the "Bad input" table in docs/operations.md.

The rule: a configuration or path mistake is refused before any work starts (exit status 2, one stderr line
naming the key, file or line and the fix, no traceback); one bad record or file among many is recorded (an
error row with its reason, and the run goes on); a valid record is accepted. Never a traceback, never a silent
wrong result.

Refusals go through `ray-entigraph validate` in-process. Recorded and accepted inputs go through
`synthesize --dry-run` (it reads every input file the way ingest does, with no Ray and no model), and then
through the ingest stage's worker called in-process, without Ray, to read the committed rows. The preflight's
own refusals (a missing replay source, questions, held-out text or model, a misspelt prompt placeholder,
output_dir inside input.path) are tested in tests/unit/workflows/test_preflight.py.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_entigraph.cli import main
from ray_entigraph.config import load_config
from ray_entigraph.context import RunContext
from ray_entigraph.stages.ingest import MAX_TITLE_TOKENS, IngestWorker

pytestmark = pytest.mark.timeout(120)

TEXT = "The Harbour Guild of Kestavel was founded in 1742 by Mara Odell, a shipwright from the northern coast."
QUESTION = {"question": "Who founded the Harbour Guild?", "options": ["Mara Odell", "Ivo Brandt", "No one", "A king"],
            "gold_label": 1}
RECORD = {"article_id": "a1", "title": "The Guild", "article": TEXT, "questions": [QUESTION]}


def _refused(capsys, tmp_path: Path, *overrides: str) -> str:
    """`validate` refuses: exit 2, exactly one stderr line with the fix, no traceback; the line is returned."""
    assert main(["validate", f"output_dir={tmp_path}/run", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "Fix" in err, err
    assert err.startswith("ray-entigraph validate: error: ")
    return err


def _questions(tmp_path: Path, bad: object, name: str = "q.jsonl") -> Path:
    """A questions file whose line 1 is a good record and line 2 is `bad`."""
    path = tmp_path / name
    path.write_text(json.dumps(RECORD) + "\n" + json.dumps(bad) + "\n")
    return path


def _dry_run(capsys, *overrides: str) -> dict:
    """`synthesize --dry-run --json`: reads every input file, starts no Ray and no model."""
    assert main(["synthesize", "--dry-run", "--json", *overrides]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return json.loads(out.out)


def _ingest(*overrides: str) -> tuple[list[dict], list[dict]]:
    """The ingest stage's worker over every unit (a file or a byte range of it), as Ray Data calls it (one unit
    per call), without Ray:
    (committed documents rows, error rows)."""
    config = load_config(None, list(overrides))
    ctx = RunContext.resolve(config)
    worker = IngestWorker(config, ctx.layout)
    for unit in ctx.ingest_units():
        worker(pa.Table.from_pylist([{"marker": unit["marker"], "members": json.dumps(unit["members"])}]))
    out = Path(config.output_dir)

    def rows(folder: Path) -> list[dict]:
        return [r for f in sorted(folder.glob("**/*.parquet")) for r in pq.read_table(f).to_pylist()]

    return rows(out / "documents"), rows(out / "errors" / "documents")


@pytest.fixture(autouse=True)
def _bundled_tokenizer(bundled_model_dir):
    """The dry run and the worker load the bundled model's tokenizer: convert it once, outside the tests' time."""


# --- refused: a configuration or path mistake, before any work starts ----------------------------------------


def test_an_override_with_a_yaml_error_is_refused(capsys, tmp_path):
    err = _refused(capsys, tmp_path, "seed=[1")
    assert "'seed=[1'" in err and "not valid YAML" in err


def test_a_questions_line_that_is_not_an_object_is_refused(capsys, tmp_path):
    path = _questions(tmp_path, [1, 2])
    err = _refused(capsys, tmp_path, f"eval.questions={path}")
    assert f"eval.questions: {path}:2: a JSON list, not an object" in err


@pytest.mark.parametrize("name, content, fragment", [
    ("q.jsonl", json.dumps({**RECORD, "questions": {"q1": QUESTION}}), ":1: `questions` is a dict, not a list"),
    ("q.json", json.dumps(RECORD, indent=2), ":1: one JSON object spread over several lines"),
    ("q.json", json.dumps({"data": [RECORD]}), "holds no questions"),
], ids=["questions-field-a-dict", "a-json-file-holding-one-object", "a-dict-wrapping-the-records"])
def test_questions_given_as_a_dict_are_refused(capsys, tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_text(content + "\n")
    err = _refused(capsys, tmp_path, f"eval.questions={path}")
    assert "eval.questions" in err and str(path) in err and fragment in err


@pytest.mark.parametrize("question, fragment", [
    ({**QUESTION, "options": "ABCD"}, "`options` is a list of option texts"),
    ({**QUESTION, "options": ["only one"]}, "needs at least 2 options, has 1"),
    ({**QUESTION, "options": []}, "needs at least 2 options, has 0"),
    ({**QUESTION, "gold_label": 5}, "gold_label 5 is not a 1-based index into its 4 options"),
    ({**QUESTION, "gold_label": 0}, "gold_label 0 is not a 1-based index"),
    ({**QUESTION, "gold_label": "1"}, "gold_label '1' is not a 1-based index"),
    ({**QUESTION, "gold_label": True}, "gold_label True is not a 1-based index"),
    ({**QUESTION, "options": ["a", None, "c", "d"]}, "option 2 is None, not an option text"),
    ({**QUESTION, "options": ["a", " ", "c", "d"]}, "option 2 is ' ', not an option text"),
], ids=["options-a-string", "one-option", "no-options", "gold-past-the-options", "gold-zero", "gold-a-string",
        "gold-a-bool", "option-null", "option-blank"])
def test_bad_options_are_refused_naming_file_and_line(capsys, tmp_path, question, fragment):
    path = _questions(tmp_path, {**RECORD, "article_id": "a2", "questions": [question]})
    err = _refused(capsys, tmp_path, f"eval.questions={path}")
    assert f"eval.questions: {path}:2 question 1: " in err and fragment in err


def test_the_eval_command_refuses_bad_questions_before_ray(capsys, tmp_path):
    path = _questions(tmp_path, {**RECORD, "article_id": "a2", "questions": [{**QUESTION, "options": "ABCD"}]})
    ray = sys.modules.get("ray")
    started_before = ray is not None and ray.is_initialized()  # an earlier test's session may hold one
    assert main(["eval", f"output_dir={tmp_path}/run", f"eval.questions={path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and f"{path}:2 question 1" in err and "Fix" in err
    ray = sys.modules.get("ray")
    assert started_before or ray is None or not ray.is_initialized()  # refused before Ray started


def test_a_training_name_that_leaves_output_dir_is_refused(capsys, tmp_path):
    err = _refused(capsys, tmp_path, "train.name=../../x")
    assert "train.name '../../x' would leave output_dir" in err


@pytest.mark.parametrize("key, fragment", [
    ("input.path", "input path is empty"),
    ("output_dir", "output_dir is empty"),
    ("eval.questions", "eval.questions is empty"),
])
def test_an_empty_path_is_refused_not_read_as_the_current_folder(capsys, tmp_path, key, fragment):
    err = _refused(capsys, tmp_path, f"{key}=")
    assert fragment in err and key in err


# --- recorded: one bad file among many, the run goes on --------------------------------------------------------


def test_a_corrupt_parquet_file_among_good_ones_is_recorded(capsys, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"title": "A", "text": TEXT}) + "\n")
    pq.write_table(pa.table({"title": ["B"], "text": [TEXT.replace("1742", "1811")]}), folder / "b.parquet")
    good = (folder / "b.parquet").read_bytes()
    (folder / "c.parquet").write_bytes(good[: len(good) // 2])  # truncated: no footer
    args = [f"input.path={folder}", f"output_dir={tmp_path}/run"]
    est = _dry_run(capsys, *args)
    assert est["num_input_files"] == 3 and est["num_documents"] == 2 and est["num_rejected_inputs"] == 1
    documents, errors = _ingest(*args)
    assert sorted(r["title"] for r in documents) == ["A", "B"]
    assert len(errors) == 1 and errors[0]["stage"] == "documents"
    assert errors[0]["error"].startswith(f"{folder / 'c.parquet'}: not a readable Parquet file: c.parquet (")
    assert "Fix:" in errors[0]["error"]


@pytest.mark.parametrize("content, documents", [
    (b"7\n" + json.dumps({"title": "A", "text": TEXT}).encode() + b"\n", 1),
    (json.dumps({"title": "caf\u00e9", "text": TEXT}, ensure_ascii=False).encode("latin-1") + b"\n", 0),
], ids=["first-line-a-number", "not-utf8"])
def test_an_input_whose_first_line_is_not_a_record_is_recorded(capsys, tmp_path, content, documents):
    """eval.questions=auto peeks at the input's first line: a bad one means "no questions", not a traceback."""
    path = tmp_path / "docs.jsonl"
    path.write_bytes(content)
    args = [f"input.path={path}", f"output_dir={tmp_path}/run"]
    assert main(["validate", *args]) == 0
    assert "Traceback" not in capsys.readouterr().err
    est = _dry_run(capsys, *args)
    assert est["num_documents"] == documents and est["num_rejected_inputs"] == 1


# --- accepted: valid records ------------------------------------------------------------------------------------


def test_line_separators_inside_json_strings_are_accepted(capsys, tmp_path):
    texts = [f"{TEXT}\u2028And a second line.", f"{TEXT}\u2029Another paragraph.", f"{TEXT}\u0085Next line."]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"title": f"T{i}", "text": t}, ensure_ascii=False) + "\n"
                            for i, t in enumerate(texts)), encoding="utf-8")
    args = [f"input.path={path}", f"output_dir={tmp_path}/run"]
    est = _dry_run(capsys, *args)
    assert est["num_documents"] == 3 and est["num_rejected_inputs"] == 0
    documents, errors = _ingest(*args)
    assert errors == [] and sorted(r["text"] for r in documents) == sorted(texts)


def test_a_json_file_holding_an_array_of_records_is_accepted(capsys, tmp_path):
    path = tmp_path / "docs.json"
    path.write_text(json.dumps([{"title": "A", "text": TEXT}, {"title": "B", "text": TEXT.replace("1742", "1811")}],
                               indent=2))
    est = _dry_run(capsys, f"input.path={path}", f"output_dir={tmp_path}/run")
    assert est["num_input_files"] == 1 and est["num_documents"] == 2 and est["num_rejected_inputs"] == 0
    # the questions loader reads the same layout
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps([RECORD, {**RECORD, "article_id": "a2"}], indent=2))
    assert main(["validate", f"output_dir={tmp_path}/run", f"eval.questions={questions}"]) == 0


def test_a_word_longer_than_the_chunk_limit_is_cut_by_tokens(capsys, tmp_path):
    word = "".join(f"segment{i:04d}" for i in range(300))  # one 3,300-character "word": no space to cut at
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"title": "Blob", "text": word}) + "\n")
    args = [f"input.path={path}", f"output_dir={tmp_path}/run", "ingest.max_document_tokens=64"]
    est = _dry_run(capsys, *args)
    assert est["num_documents"] > 1 and est["num_rejected_inputs"] == 0
    documents, errors = _ingest(*args)
    assert errors == [] and len(documents) == est["num_documents"]
    assert max(r["num_tokens"] for r in documents) <= 64
    assert "".join(r["text"] for r in sorted(documents, key=lambda r: r["chunk_index"])) == word  # nothing lost


def test_a_very_long_title_is_cut_and_kept_in_metadata(capsys, caplog, tmp_path):
    title = " ".join(f"word{i}" for i in range(5000))
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"title": title, "text": TEXT}) + "\n")
    args = [f"input.path={path}", f"output_dir={tmp_path}/run"]
    assert _dry_run(capsys, *args)["num_documents"] == 1
    with caplog.at_level(logging.WARNING, logger="ray_entigraph.stages.ingest"):
        documents, errors = _ingest(*args)
    assert errors == [] and len(documents) == 1
    (row,) = documents
    worker = IngestWorker(load_config(None, args))
    assert worker.count_tokens(row["title"]) <= MAX_TITLE_TOKENS and row["title"].endswith("…")
    assert title.startswith(row["title"].removesuffix("…"))
    assert json.loads(row["metadata_json"])["full_title"] == title  # recorded in the row, not lost
    assert any("full_title" in r.getMessage() for r in caplog.records)


def test_a_large_file_is_ingested_in_byte_ranges_with_the_same_documents(tmp_path):
    lines = [json.dumps({"title": f"Doc {i}", "text": f"{TEXT} Number {i}."}) for i in range(40)] + ["{bad"]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    whole, whole_errors = _ingest(f"input.path={path}", f"output_dir={tmp_path}/whole")
    per_task = path.stat().st_size // 5
    pieces, piece_errors = _ingest(f"input.path={path}", f"output_dir={tmp_path}/pieces",
                                   f"ingest.bytes_per_task={per_task}")
    n = -(-path.stat().st_size // per_task)
    markers = sorted(p.name for p in (tmp_path / "pieces" / "documents" / "_files").glob("*.json"))
    assert n >= 5 and len(markers) == n and all(f"-of-{n}" in m for m in markers)  # n units of one file
    assert sorted(r["doc_id"] for r in pieces) == sorted(r["doc_id"] for r in whole) and len(whole) == 40
    assert len(piece_errors) == len(whole_errors) == 1


def test_small_files_are_read_in_groups_and_an_edited_file_regroups_only_its_own(tmp_path):
    from ray_entigraph.context import RunContext

    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(30):
        (folder / f"d{i:02d}.md").write_text(f"{TEXT} Document number {i}.")
    args = [f"input.path={folder}", f"output_dir={tmp_path}/run", "ingest.files_per_task=4"]
    units = RunContext.resolve(load_config(None, args)).ingest_units()
    members = [m["path"] for u in units for m in u["members"]]
    assert len(units) < 30 and sorted(members) == sorted(str(p) for p in folder.iterdir())  # each file once
    documents, errors = _ingest(*args)
    assert len(documents) == 30 and errors == []

    (folder / "d07.md").write_text(f"{TEXT} Document number 7, edited.")  # another identity: its group changes
    before = {u["marker"] for u in units}
    after = RunContext.resolve(load_config(None, args)).ingest_units()
    changed = [u for u in after if u["marker"] not in before]
    assert len(changed) == 1 and any(m["path"].endswith("d07.md") for m in changed[0]["members"])


def test_a_unit_commits_its_documents_in_pieces_and_a_rerun_makes_the_same_shards(tmp_path, monkeypatch):
    """A worker holds at most FLUSH_CHARS of documents: a unit larger than that commits several shards (named
    after the unit and the piece), which a re-run of the unit rewrites under the same names."""
    from ray_entigraph.stages import ingest

    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(12):
        (folder / f"d{i:02d}.md").write_text(f"{TEXT} Document number {i}.")
    # a group ends where a file's URL hash says so (1 in files_per_task): a large one keeps the twelve together
    args = [f"input.path={folder}", f"output_dir={tmp_path}/run", "ingest.files_per_task=1000000"]
    whole, _ = _ingest(*args)
    monkeypatch.setattr(ingest, "FLUSH_CHARS", 3 * len(TEXT))  # a piece every three documents or so
    args[1] = f"output_dir={tmp_path}/pieces"
    units = RunContext.resolve(load_config(None, args)).ingest_units()
    pieces, errors = _ingest(*args)
    shards = sorted(p.name for p in (tmp_path / "pieces" / "documents").glob("p=*/*.parquet"))
    assert errors == [] and len(shards) > len(list((tmp_path / "run" / "documents").glob("p=*/*.parquet")))
    assert sorted(d["doc_id"] for d in pieces) == sorted(d["doc_id"] for d in whole) and len(pieces) == 12
    markers = [json.loads((tmp_path / "pieces" / "documents" / "_files" / f"{u['marker']}.json").read_text())
               for u in units]
    assert sum(m["num_ok"] for m in markers) == 12
    again, _ = _ingest(*args)  # the unit again (as after a crash before its marker): the same shards, no more
    assert sorted(p.name for p in (tmp_path / "pieces" / "documents").glob("p=*/*.parquet")) == shards
    assert len(again) == 12


def test_input_where_keeps_matching_records_counts_the_rest_and_names_a_missing_column(tmp_path, capsys):
    """input.where filters records on their metadata columns at ingest, before any model call: a Parquet
    dataset of several files with `language` and `score` columns keeps the English rows scoring >= 3, the
    others are counted in the unit's marker; a record without a named column is an error row naming it; a
    malformed condition is refused before anything starts."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    rows = [{"title": f"Doc {i}", "text": f"{TEXT} Record {i}.", "language": "en" if i % 3 else "fr",
             "score": i % 5} for i in range(30)]
    for f in range(3):
        pq.write_table(pa.Table.from_pylist(rows[f::3]), folder / f"part-{f}.parquet")
    (folder / "odd.jsonl").write_text(json.dumps({"title": "No score", "text": TEXT, "language": "en"}) + "\n")
    args = [f"input.path={folder}", f"output_dir={tmp_path}/run", "input.where=['language == en', 'score >= 3']"]
    docs, errors = _ingest(*args)
    kept = sorted(int(d["title"].split()[1]) for d in docs)
    assert kept == [i for i in range(30) if i % 3 and i % 5 >= 3]
    assert len(errors) == 1 and "input.where names column 'score'" in errors[0]["error"]
    markers = [json.loads(p.read_text()) for p in (tmp_path / "run" / "documents" / "_files").glob("*.json")]
    assert sum(m["num_filtered"] for m in markers) == 30 - len(kept)
    assert _dry_run(capsys, *args)["num_filtered_inputs"] == 30 - len(kept)
    line = _refused(capsys, tmp_path, f"input.path={folder}", "input.where=['score => 3']")
    assert "input.where" in line and "'score => 3'" in line
