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
