import json

import pyarrow as pa

from ray_entigraph import schema, storage
from ray_entigraph.config import InputConfig
from ray_entigraph.errors import InputError
from ray_entigraph.inputs import list_input_files, records_from_file
from ray_entigraph.stages.ingest import documents_from_record

count = lambda s: len(s.split())  # noqa: E731


def test_empty_file_is_recorded(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    recs = records_from_file(str(tmp_path / "empty.txt"), "text", InputConfig())
    assert len(recs) == 1 and "empty file" in recs[0]["error"]


def test_non_utf8_is_recorded_with_fix(tmp_path):
    (tmp_path / "latin.txt").write_bytes("Caf\xe9 au lait".encode("latin-1"))
    recs = records_from_file(str(tmp_path / "latin.txt"), "text", InputConfig())
    assert "not valid UTF-8" in recs[0]["error"] and "0xe9" in recs[0]["error"] and "iconv" in recs[0]["error"]


def test_jsonl_bad_line_and_missing_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"title": "A", "text": "Alpha beta gamma delta epsilon zeta."}\n{oops\n{"title": "B"}\n')
    recs = records_from_file(str(path), "jsonl", InputConfig())
    assert recs[0]["text"].startswith("Alpha")
    assert "invalid JSON on line 2" in recs[1]["error"]
    assert "no string field 'text'" in recs[2]["error"]


def test_quality_layout_uses_article_and_strips_html(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"title": "T", "article": "<p>One para.</p><p>Two <b>bold</b>.</p>", "questions": []}) + "\n")
    rec = records_from_file(str(path), "jsonl", InputConfig())[0]
    assert "<" not in rec["text"] and "Two bold." in rec["text"] and "questions" in rec["metadata"]


def test_long_document_is_chunked_not_truncated():
    text = "\n\n".join(" ".join(f"w{p}{i}" for i in range(40)) for p in range(5))
    rows = documents_from_record({"source": "s", "title": "Long", "text": text, "metadata": {}},
                                 max_tokens=100, min_chars=1, count_tokens=count)
    assert len(rows) == 3 and all(r["num_tokens"] <= 100 for r in rows)
    assert {r["parent_doc_id"] for r in rows} == {rows[0]["parent_doc_id"]}
    assert rows[1]["title"] == "Long (part 2 of 3)"
    assert sum(r["num_tokens"] for r in rows) == count(text)


def test_too_short_document():
    rows = documents_from_record({"source": "s", "title": "x", "text": "hi", "metadata": {}},
                                 max_tokens=100, min_chars=20, count_tokens=count)
    assert "too short" in rows[0]["error"]


def test_listing_errors(tmp_path):
    try:
        list_input_files(InputConfig(path=str(tmp_path / "missing")))
        raise AssertionError("expected InputError")
    except InputError as exc:
        assert "does not exist" in str(exc)
    (tmp_path / "notes.csv").write_text("a,b")
    try:
        list_input_files(InputConfig(path=str(tmp_path)))
        raise AssertionError("expected InputError")
    except InputError as exc:
        assert "No input files" in str(exc)
    (tmp_path / "a.md").write_text("# doc")
    assert list_input_files(InputConfig(path=str(tmp_path))) == [(str(tmp_path / "a.md"), "text")]


def test_commit_protocol_hides_orphans(tmp_path):
    store = storage.StageStore(str(tmp_path), schema.SYNTHESIZE)
    table = schema.rows_to_table([{"task_id": "t1", "text": "x"}, {"task_id": "t2", "text": "y"}], schema.SYNTHETIC)
    entry = store.commit(table, None, keys=["t1", "t2"], stats={"num_ok": 2})
    assert entry["shard"] == storage.shard_name(["t2", "t1"])  # order-free, deterministic
    # an orphan: data written, marker never written (a crash in between)
    storage.write_bytes(storage.join(store.url, "part-orphan.parquet"), storage.table_to_parquet_bytes(table))
    assert store.read(["task_id"]).column("task_id").to_pylist() == ["t1", "t2"]
    assert sorted(store.iter_key_column("task_id")) == ["t1", "t2"]
    errors = schema.rows_to_table([{"stage": "s", "request_key": "t3", "doc_id": "d", "error": "boom"}], schema.ERRORS)
    store.commit(schema.empty_table(schema.SYNTHETIC), errors, keys=["t3"], stats={})
    assert len(store.error_urls()) == 1 and store.manifest_entries()[0]["sha256"]
    assert pa.concat_tables([storage.read_parquet(u) for u in store.error_urls()]).column("error").to_pylist() == ["boom"]


def test_no_temp_files_left(tmp_path):
    storage.write_text(str(tmp_path / "a" / "b.json"), "{}")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]


def test_failure_explanation_finds_the_worker_error_behind_ray_wrappers():
    from ray_entigraph.errors import explain_stage_failure

    class UserCodeException(Exception):
        pass

    inner = RuntimeError('ray::MapBatches(f)() (pid=1)\n  File "x.py", line 4\n    raise OSError(...)\n'
                         "botocore.exceptions.EndpointConnectionError: Could not connect to the endpoint URL: \"http://h/b\"")
    outer = UserCodeException("UDF failed to process a data block.\nTo change retry attempts, configure it.")
    outer.__cause__ = inner
    msg = explain_stage_failure("synthetic", outer, "s3://b/run")
    assert msg.startswith("Stage 'synthetic' failed: EndpointConnectionError: Could not connect to the endpoint URL")
    assert "storage problem with 's3://b/run'" in msg and "re-run the same command" in msg
