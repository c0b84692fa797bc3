"""Reading the user's input (inputs.py): listing input files and turning each file into raw records, with
every problem recorded as an error record naming the fix."""

import json

import pytest

from ray_entigraph.config import InputConfig
from ray_entigraph.errors import InputError
from ray_entigraph.inputs import list_input_files, records_from_file


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
    article = "<p>One para.</p><p>Two <b>bold</b>.</p>"
    path.write_text(json.dumps({"title": "T", "article": article, "questions": []}) + "\n")
    rec = records_from_file(str(path), "jsonl", InputConfig())[0]
    assert "<" not in rec["text"] and "Two bold." in rec["text"] and "questions" in rec["metadata"]


def test_listing_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        list_input_files(InputConfig(path=str(tmp_path / "missing")))
    (tmp_path / "notes.csv").write_text("a,b")
    with pytest.raises(InputError, match="No input files"):
        list_input_files(InputConfig(path=str(tmp_path)))
    (tmp_path / "a.md").write_text("# doc")
    assert list_input_files(InputConfig(path=str(tmp_path))) == [(str(tmp_path / "a.md"), "text")]


def test_a_line_separator_inside_a_json_string_is_part_of_the_record(tmp_path):
    """U+2028, U+2029 and U+0085 are valid inside a JSON string; only \\n ends a JSON Lines record."""
    texts = ["First\u2028line and the rest of the article.", "Second\u2029part\u0085end of it.", "Plain text."]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"title": f"t{i}", "text": t}, ensure_ascii=False) + "\r\n"
                            for i, t in enumerate(texts)), encoding="utf-8")
    recs = records_from_file(str(path), "jsonl", InputConfig(path=str(path)))
    assert [r.get("error") for r in recs] == [None] * 3 and [r["text"] for r in recs] == texts


def test_a_json_file_holding_an_array_gives_its_records(tmp_path):
    path = tmp_path / "docs.json"
    path.write_text(json.dumps([{"title": "a", "text": "Alpha text."}, {"title": "b", "text": "Beta text."}, 7]))
    recs = records_from_file(str(path), "jsonl", InputConfig(path=str(path)))
    assert [r.get("text") for r in recs[:2]] == ["Alpha text.", "Beta text."]
    assert recs[2]["error"] == "item 2 of docs.json is not a JSON object"


def test_an_empty_input_path_is_refused():
    with pytest.raises(InputError, match="input path is empty"):
        list_input_files(InputConfig(path=""))


def test_byte_ranges_of_a_large_file_hold_every_record_exactly_once(tmp_path):
    """JSON Lines and Parquet read in byte ranges (ingest.bytes_per_task): whatever the cuts, the ranges that
    tile a file give each line and each row group once, a bad line included, as reading the file whole does."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ray_entigraph.inputs import records_from_range

    cfg = InputConfig(path=str(tmp_path))
    lines = [json.dumps({"title": f"T{i}", "text": f"doc {i} " + "x" * (i % 37) + " \u2028 end"}) for i in range(200)]
    lines[50] = "{not json"
    jsonl = tmp_path / "big.jsonl"
    jsonl.write_bytes(("\n".join(lines) + "\r\n").encode())  # a CRLF at the end too
    size = jsonl.stat().st_size
    whole = records_from_file(str(jsonl), "jsonl", cfg)
    for pieces in (1, 2, 7, 64):
        got = [r for i in range(pieces)
               for r in records_from_range(str(jsonl), "jsonl", cfg, size * i // pieces, size * (i + 1) // pieces)]
        assert [r.get("text") for r in got] == [r.get("text") for r in whole], pieces
        assert sum("invalid JSON" in r.get("error", "") for r in got) == 1

    table = pa.table({"title": [f"P{i}" for i in range(1000)], "text": [f"row {i} text" for i in range(1000)]})
    parquet = tmp_path / "big.parquet"
    pq.write_table(table, parquet, row_group_size=100)  # 10 row groups
    size = parquet.stat().st_size
    for pieces in (1, 3, 10, 40):
        got = [r for i in range(pieces)
               for r in records_from_range(str(parquet), "parquet", cfg, size * i // pieces, size * (i + 1) // pieces)]
        assert [r["text"] for r in got] == table.column("text").to_pylist(), pieces
