"""Sessions, per-run records and the boards that hand them to nodes downstream (pure torch)."""
import pytest
import torch
from attention_align.guidance.engine import GuidanceLog
from attention_align.guidance.records import RunInfo, RunStamp, latent_digest
from attention_align.nodes.host.context import RunBoard, Session, resolve_record


def record(node, latent, serial=1):
    log = GuidanceLog("T-SAM", "euler", "in_place", 3)
    return log.finish(RunStamp(node, "p1", serial, latent_digest(latent)))


def test_the_digest_follows_values_and_shape_not_the_tensor_object_or_device_dtype():
    x = torch.randn(2, 4, 8, 8)
    assert latent_digest(x) == latent_digest(x.clone()) == latent_digest(x.double())
    assert latent_digest(x) != latent_digest(x.reshape(4, 2, 8, 8))
    y = x.clone()
    y[1, 2, 3, 4] += 1e-6
    assert latent_digest(x) != latent_digest(y)


def test_a_board_resolves_the_run_of_a_latent_and_refuses_ambiguity_clearly():
    board = RunBoard("Apply Guidance", keep=3)
    with pytest.raises(ValueError, match="guidance_log: no sampling run of this model has finished yet"):
        board.resolve(input_name="guidance_log")
    a, b = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    board.publish(record("5", a))
    assert board.resolve(input_name="x").stamp.node_id == "5"             # one sampler node: its latest run
    board.publish(record("9", b, 2))
    assert board.resolve(latent=a).stamp.node_id == "5" and board.resolve(latent=b).stamp.node_id == "9"
    with pytest.raises(ValueError, match=r"guidance_log: this model was sampled by 2 sampler nodes \(5, 9\)"):
        board.resolve(input_name="guidance_log")
    with pytest.raises(ValueError, match="latent: it is not the output of any sampling run"):
        board.resolve(latent=a + 2)
    for k in range(3, 6):
        board.publish(record("5", a + k, k))
    assert len(board.records) == 3 and [r.stamp.serial for r in board.records] == [3, 4, 5]   # bounded


def test_a_record_given_directly_is_checked_against_a_connected_latent():
    a = torch.zeros(1, 4, 2, 2)
    rec = record("3", a)
    assert resolve_record(rec, latent=None, input_name="guidance_log") is rec
    assert resolve_record(rec, latent=a, input_name="guidance_log") is rec
    with pytest.raises(ValueError, match="latent: it is not the latent of the run guidance_log comes from"):
        resolve_record(rec, latent=a + 1, input_name="guidance_log")


def test_records_are_immutable_and_a_session_keeps_runs_apart():
    rec = record("3", torch.zeros(1))
    with pytest.raises(AttributeError):
        rec.method = "other"
    assert isinstance(rec.steps, tuple) and isinstance(rec.notes, tuple)
    session = Session(RunInfo(sigmas=torch.tensor([2.0, 1.0, 0.0])))
    assert session.info.total_steps == 2
    key_a, key_b = object(), object()
    run_a = type("Run", (), {"observers": ("o",), "editors": ()})()
    run_b = type("Run", (), {"observers": (), "editors": ("e",)})()
    session.add(key_a, run_a)
    session.add(key_b, run_b)
    assert session.run_for(key_a) is run_a and session.observers == ("o",) and session.editors == ("e",)
    with pytest.raises(RuntimeError, match="joined the same sampling run twice"):
        session.add(key_a, run_a)
    with pytest.raises(RuntimeError, match="no state for the attachment"):
        session.run_for(object())
