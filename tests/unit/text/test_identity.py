"""Identities (text/identity.py): document ids, request keys and derived seeds."""

import pytest

from ray_entigraph.text.identity import derive_seed, doc_id_for, request_key

KEY = dict(doc_id="d1", kind="pair", entities=("A", "B"), prompt_version="v1", model="m", sampling={"t": 1.0}, seed=0)


def test_doc_id_depends_on_normalised_text_only():
    assert doc_id_for("Hello world\r\n") == doc_id_for("Hello world   \n\n")
    assert doc_id_for("Hello world") != doc_id_for("Hello World")


@pytest.mark.parametrize("field,value", [("prompt_version", "v2"), ("model", "m2"), ("sampling", {"t": 0.5}),
                                         ("seed", 1), ("entities", ("B", "A")), ("kind", "triplet"), ("doc_id", "d2")])
def test_request_key_changes_with_every_input(field, value):
    assert request_key(**KEY) == request_key(**dict(KEY))
    assert request_key(**{**KEY, field: value}) != request_key(**KEY)


def test_derived_seed_stable():
    assert derive_seed(0, "d1", "pair") == derive_seed(0, "d1", "pair") != derive_seed(1, "d1", "pair")
