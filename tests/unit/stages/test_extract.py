"""The extract stage's parsing step (stages/extract.py): names are grounded in the document before the cap."""

from ray_entigraph.stages.extract import entities_from_output

DOC = "Mara Vell founded the Kestavel Guild in 1841. The guild met at Orrin Hall."


def test_invented_names_early_in_the_list_do_not_push_out_real_ones():
    raw = '{"summary": "s", "entities": ["Lord Fakeworth", "Imaginary Bay", "Mara Vell", "Kestavel Guild", ' \
          '"Orrin Hall"]}'
    parsed, dropped = entities_from_output(raw, DOC, max_entities=2, grounded=True)
    assert parsed.entities == ["Mara Vell", "Kestavel Guild"] and dropped == 2


def test_without_grounding_the_cap_keeps_the_model_order():
    raw = '{"summary": "s", "entities": ["Lord Fakeworth", "Mara Vell", "Orrin Hall"]}'
    parsed, dropped = entities_from_output(raw, DOC, max_entities=2, grounded=False)
    assert parsed.entities == ["Lord Fakeworth", "Mara Vell"] and dropped == 0

