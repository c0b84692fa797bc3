"""The synthesis stages, one module each: ingest, extract, plan (pure, used by synthesize), synthesize, judge,
curate. A stage module holds its driver half (a `base.Stage`: enabled, folder, plan, apply) and its worker
half (a callable class Ray builds inside an actor, or a task function), around the pure functions of
`ray_entigraph.text`. Every unit of work commits one shard through `base.commit_unit` and returns one small
manifest row that the driver streams for progress and the ledger.
"""
