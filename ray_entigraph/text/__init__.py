"""Pure functions with no Ray and no model in them: identity, chunking, parsing, planning, grounding, dedup."""
