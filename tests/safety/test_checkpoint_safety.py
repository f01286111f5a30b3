"""A crafted checkpoint cannot run code: it is refused with CheckpointError, and its payload
(create a file) never runs. The last step shows the payload is real: plain unpickling runs it."""

import pickle

import pytest
import torch

from labeler.models import CheckpointError, load_checkpoint


class _Payload:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))  # unpickling this creates the file


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_crafted_checkpoint_is_refused_without_running_code(tmp_path, writer):
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "model.pt"
    payload = {"format": "labeler-checkpoint-1", "name": "m2", "config": _Payload(marker)}
    if writer == "torch.save":
        torch.save(payload, checkpoint)
    else:
        checkpoint.write_bytes(pickle.dumps(payload))

    with pytest.raises(CheckpointError, match="Cannot load .*could run code") as refused:
        load_checkpoint(checkpoint)
    assert "weights_only=False" not in str(refused.value)
    assert not marker.exists(), "loading the checkpoint ran code from it"

    if writer == "torch.save":
        torch.load(checkpoint, weights_only=False)  # what an unsafe loader would do
        assert marker.exists(), "the payload must be able to run, or this test proves nothing"


def test_garbage_and_foreign_checkpoints_say_why(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="Cannot load"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a labeler checkpoint"):
        load_checkpoint(foreign)
