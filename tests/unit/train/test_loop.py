"""The training stream order (train/mix.py, as the loop reads it): each epoch covers its stream once, as a
pure function of the position (so a resumed run continues the same order)."""

from ray_entigraph.train.mix import MixSpec, stream_item


def test_stream_positions_cover_each_epoch_once():
    spec = MixSpec(10, seed=3)
    epoch0 = [stream_item(spec, p) for p in range(10)]
    epoch1 = [stream_item(spec, p) for p in range(10, 20)]
    assert sorted(epoch0) == sorted(epoch1) == [("synthetic", i) for i in range(10)] and epoch0 != epoch1
    assert [stream_item(MixSpec(10, seed=3), p) for p in range(10, 20)] == epoch1  # a pure function of position
