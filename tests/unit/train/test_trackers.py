"""Experiment trackers (train/trackers.py): TensorBoard event files that read back with the logged values,
locally and uploaded to object storage; a tracker whose library is missing is refused before any work."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from ray_entigraph import storage
from ray_entigraph.config import load_config
from ray_entigraph.errors import ConfigError
from ray_entigraph.train import trackers

LINES = [{"step": s, "loss": 3.0 - s / 10, "lr": 1e-4 * s, "loss_replay": None} for s in (1, 2, 3)]


def _scalars(folder: Path) -> dict[tuple[str, int], float]:
    """Every scalar in the TFRecord event files under `folder` (length, crc, Event proto, crc per record)."""
    from tensorboardX.proto import event_pb2

    out = {}
    for path in folder.rglob("events.out.tfevents.*"):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                out[(value.tag, event.step)] = value.simple_value
    return out


def test_tensorboard_events_read_back(tmp_path):
    config = load_config(None, [f"output_dir={tmp_path}", "train.report_to=[tensorboard]"])
    trackers.check_available(config)
    sink = trackers.Trackers(config, enabled=True)
    for line in LINES:
        sink.log(line)
    sink.close()
    got = _scalars(tmp_path / "train" / "tensorboard")
    assert got[("train/loss", 3)] == pytest.approx(2.7) and got[("train/lr", 2)] == pytest.approx(2e-4)
    assert not any(tag == "train/loss_replay" for tag, _ in got)  # None is not a number
    assert trackers.Trackers(config, enabled=False).sinks == []  # ranks other than 0 report nothing


def test_tensorboard_on_object_storage_is_uploaded(s3_bucket, tmp_path):
    config = load_config(None, [f"output_dir={s3_bucket}/run", "train.report_to=[tensorboard]"])
    sink = trackers.Trackers(config, enabled=True)
    sink.log(LINES[0])
    sink.close()
    storage.get_dir(f"{s3_bucket}/run/train/tensorboard", str(tmp_path / "back"))
    assert _scalars(tmp_path / "back")[("train/loss", 1)] == pytest.approx(2.9)


def test_a_missing_tracker_library_is_refused_with_the_fix(tmp_path, monkeypatch):
    config = load_config(None, [f"output_dir={tmp_path}", "train.report_to=[tensorboard, wandb]"])
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda m: None if m == "wandb" else real(m))
    with pytest.raises(ConfigError, match="train.report_to lists 'wandb'.*pip install wandb"):
        trackers.check_available(config)
