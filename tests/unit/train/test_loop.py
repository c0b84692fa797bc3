"""The training loop's data order (train/loop.py): each epoch covers the stream once, as a pure function of
the position (so a resumed run continues the same order)."""

from ray_entigraph.train.loop import stream_item


def test_stream_positions_cover_each_epoch_once():
    stream = [("synthetic", i) for i in range(10)]
    epoch1 = [stream_item(stream, p, seed=3) for p in range(10, 20)]
    assert sorted(epoch1) == stream and epoch1 != stream
    assert [stream_item(stream, p, 3) for p in range(10)] == stream
    assert [stream_item(stream, p, 3) for p in range(10, 20)] == epoch1  # a pure function of position
