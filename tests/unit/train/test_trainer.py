"""Tests for spark3r_stream.train: targets, the correspondence auxiliary, the schedule and resumable training."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from spark3r_stream.geometry import apply_transform, unproject_depth
from spark3r_stream.models import build_model
from spark3r_stream.models.pose_encoding import pose_encoding_to_extri_intri
from spark3r_stream.synth import render_sequence
from spark3r_stream.train.data import MotionRange, ScenePool, clip_targets, draw_clip, make_batch
from spark3r_stream.train.losses import CorrespondenceHead, camera_loss, correspondence_errors, quaternion_errors
from spark3r_stream.train.trainer import (
    TRAIN_PRESETS,
    Clips,
    Stage,
    TrainConfig,
    learning_rate,
    ratios,
    stage_at,
    train,
    training_losses,
)


@pytest.fixture(scope="module")
def sequence():
    return render_sequence(3, 6, height=56, width=56)


def test_clip_targets_are_in_frame_zero_and_scale_normalised(sequence):
    frames = np.array([1, 3, 5])
    t = clip_targets(sequence, frames)
    np.testing.assert_allclose(t["cam_from_ref"][0], np.eye(4), atol=1e-9)
    assert np.linalg.norm(t["points"][t["valid"]], axis=-1).mean() == pytest.approx(1.0, rel=1e-5)
    # frame 2's depth, unprojected and moved by its pose, lands on its world points
    cam_points = unproject_depth(t["depth"][2], sequence.intrinsics)
    ref_points = apply_transform(np.linalg.inv(t["cam_from_ref"][2]), cam_points)
    valid = t["valid"][2]
    np.testing.assert_allclose(ref_points[valid], t["points"][2][valid], atol=1e-4)


def test_batch_pose_encoding_round_trips_to_the_targets(sequence):
    pool = ScenePool(size=1, frames=6, image_size=56, first_seed=5, step_m=0.1, turn_deg=(2.0, 8.0))
    batch = make_batch(pool, np.random.default_rng(0), num_clips=2, clip_len=3, gaps=(1, 2))
    assert batch.images.shape == (2, 3, 3, 56, 56) and batch.pose_enc.shape == (2, 3, 9)
    extrinsics, _ = pose_encoding_to_extri_intri(batch.pose_enc, image_size_hw=(56, 56))
    np.testing.assert_allclose(extrinsics[:, 0].numpy(), np.eye(4)[:3][None].repeat(2, 0), atol=1e-6)
    assert 2.0 <= pool.turn_deg[0] and pool.turn_deg[1] <= 8.0


def test_correspondence_head_starts_from_no_motion():
    head = CorrespondenceHead(8, (4, 4), 14)
    assert head.mlp[-1].weight.abs().max() > 0  # small, not zero: a zero last layer would block the backbone's gradient
    torch.nn.init.zeros_(head.mlp[-1].weight)
    uv = head(torch.randn(1, 2, 5 + 16, 8), patch_start_idx=5)
    assert uv.shape == (1, 2, 16, 2)
    np.testing.assert_allclose(uv[0, 0, 0].detach().numpy(), [7 / 55 * 2 - 1] * 2, atol=1e-6)
    np.testing.assert_allclose(uv[0, 0, 15].detach().numpy(), [49 / 55 * 2 - 1] * 2, atol=1e-6)
    target = uv.detach().clone()
    target[:, 1] += torch.tensor([0.1, -0.3])  # frame 1 moved by (0.1, -0.3); frame 0 maps onto itself
    batch = type("B", (), {"patch_uv": target, "patch_visible": torch.ones(1, 2, 16, dtype=bool)})
    error, no_motion = correspondence_errors(uv, batch, head.centres)
    assert error.item() == pytest.approx(0.4) and no_motion.item() == pytest.approx(0.4)  # |dx| + |dy|, frames 1..
    error, _ = correspondence_errors(target, batch, head.centres)
    assert error.item() == 0.0


def test_camera_loss_is_normalised_by_the_iteration_weights():
    target = torch.zeros(1, 2, 9)
    pred = torch.ones(1, 2, 9)
    assert camera_loss([pred] * 4, target).item() == pytest.approx(3.0)  # 3 terms of 1, whatever the iterations


def test_quaternion_errors_score_the_identity_guess():
    target = torch.zeros(1, 2, 9)
    target[..., 6] = 1.0
    target[0, 1, 3:7] = torch.tensor([0.0, np.sin(0.1), 0.0, np.cos(0.1)])
    pred, identity = quaternion_errors(target.clone(), target)
    assert pred.item() == 0.0 and identity.item() == pytest.approx((np.sin(0.1) + 1 - np.cos(0.1)) / 4)
    assert ratios({"quat": 1.0, "quat_identity": 2.0, "corr_l1": 3.0, "no_motion": 4.0}) == {
        "corr_ratio": 0.75,
        "quat_ratio": 0.5,
    }


def test_motion_filter_keeps_only_clips_in_range():
    pool = ScenePool(size=2, frames=12, image_size=28, first_seed=5, step_m=0.12, turn_deg=(4.0, 8.0))
    rng = np.random.default_rng(0)
    motion = MotionRange(min_deg=4.0, max_deg=25.0, min_m=0.15, max_m=0.7)
    for _ in range(5):
        seq, frames = draw_clip(pool, rng, 2, (2, 4), motion)
        assert motion.admits(seq.world_from_cam[frames[0]], seq.world_from_cam[frames[-1]])
    assert not motion.admits(np.eye(4), np.eye(4))  # no motion is rejected


def test_schedule_warms_up_at_every_stage_holds_and_decays():
    stages = (
        Stage(start_step=0, clip_len=2, num_clips=1, lr=1e-3),
        Stage(start_step=400, clip_len=2, num_clips=1, lr=3e-4),
    )
    cfg = TrainConfig(total_steps=1000, warmup_steps=100, decay_windows=((750, 1000),), curriculum=stages)
    assert learning_rate(cfg, 0) == pytest.approx(1e-5)
    assert learning_rate(cfg, 300) == 1e-3
    assert learning_rate(cfg, 400) == pytest.approx(3e-6)  # a new stage re-warms to its own peak
    assert learning_rate(cfg, 600) == 3e-4
    assert learning_rate(cfg, 1000) == pytest.approx(0.05 * 3e-4)
    assert learning_rate(cfg, 875) == pytest.approx(3e-4 * (0.05 + 0.95 * 0.5))  # half way through the window
    assert learning_rate(cfg, 610, warm_from=600) == pytest.approx(3.3e-5)  # re-warm-up after a resume
    preset = TRAIN_PRESETS["vggt-tiny"]
    assert [stage_at(preset, s.start_step) for s in preset.curriculum] == list(preset.curriculum)


def test_a_stage_depth_weight_replaces_the_configs():
    from spark3r_stream.train.losses import MatchingHead

    torch.manual_seed(0)
    model = build_model("vggt-tiny", random_weights=True)
    pool = ScenePool(size=1, frames=4, image_size=model.config.img_size, first_seed=5, step_m=0.1, turn_deg=3.0)
    batch = make_batch(pool, np.random.default_rng(0), num_clips=1, clip_len=2, gaps=(1, 1))
    aux = MatchingHead(2 * model.config.embed_dim, (8, 8), model.config.patch_size)
    cfg = TrainConfig(depth_weight=1.0)
    with torch.no_grad():
        losses, total = training_losses(model, aux, batch, Stage(start_step=0), cfg)
        _, doubled = training_losses(model, aux, batch, Stage(start_step=0, depth_weight=2.0), cfg)
    assert losses["depth"] > 0
    torch.testing.assert_close(doubled - total, losses["depth"])


def test_training_checkpoints_and_resumes(tmp_path):
    cfg = TrainConfig(
        total_steps=2,
        warmup_steps=1,
        curriculum=(
            Stage(start_step=0, clip_len=2, num_clips=1, gaps=(1, 1), matching_only=True),
            Stage(start_step=1, clip_len=2, num_clips=1, gaps=(1, 1), freeze_backbone=True),
            Stage(start_step=2, mix=(Clips(2, 1, (1, 1)), Clips(3, 1, (1, 1)))),  # two clip lengths per step
        ),
        pool_size=1,
        pool_frames=3,
        checkpoint_every=1,
        log_every=1,
        num_threads=1,
        out_dir=str(tmp_path / "run"),
    )
    state_path = train(cfg, resume=False)
    state = torch.load(state_path, weights_only=True)
    assert state["step"] == 2 and (tmp_path / "run" / "weights_000002.safetensors").exists()
    # the frozen-backbone stage (step 2) left the aggregator as step 1 made it
    after_matching = build_model("vggt-tiny", weights=tmp_path / "run" / "weights_000001.safetensors")
    after_frozen = build_model("vggt-tiny", weights=tmp_path / "run" / "weights_000002.safetensors")
    for (name, a), b in zip(after_matching.state_dict().items(), after_frozen.state_dict().values(), strict=True):
        assert torch.equal(a, b) == name.startswith("aggregator."), name
    train(dataclasses.replace(cfg, total_steps=3))
    assert torch.load(state_path, weights_only=True)["step"] == 3
    log = [json.loads(line) for line in (tmp_path / "run" / "loss_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["total"]) for r in log)
    assert "camera" not in log[0] and "camera" in log[1]  # the matching-only stage runs no heads
    assert log[0]["corr_ratio"] > 0 and log[1]["quat_ratio"] > 0
    assert [r["clip_len"] for r in log] == ["2", "2", "2+3"] and log[2]["camera"] > 0


def test_ship_weights_stores_float16_with_the_step(tmp_path, monkeypatch):
    from safetensors import safe_open

    from spark3r_stream.train import trainer

    model = build_model("vggt-tiny", random_weights=True)
    trainer.save_weights(model, tmp_path / "weights.safetensors", {"step": 7, "preset": "vggt-tiny"})
    target = tmp_path / "pkg" / "vggt-tiny.safetensors"
    target.parent.mkdir()
    monkeypatch.setattr(trainer, "packaged_weights_path", lambda preset: target)
    assert trainer.ship_weights(tmp_path / "weights.safetensors", "vggt-tiny") == target
    with safe_open(str(target), "pt") as handle:
        assert json.loads(handle.metadata()["step"]) == 7
        assert handle.get_tensor("camera_head.embed_pose.weight").dtype == torch.float16
    shipped = build_model("vggt-tiny", weights=target)
    for name, value in shipped.state_dict().items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, model.state_dict()[name].half().float())


def test_init_for_training_ties_global_queries_to_keys_and_separates_frame_zero():
    from spark3r_stream.train.init import init_for_training

    model = init_for_training(build_model("vggt-tiny", random_weights=True))
    for block in model.aggregator.global_blocks:
        weight, dim = block.attn.qkv.weight, block.attn.qkv.weight.shape[1]
        torch.testing.assert_close(weight[dim : 2 * dim], weight[:dim])
        assert not torch.equal(weight[2 * dim :], weight[:dim])  # values stay free
    frame0, others = model.aggregator.camera_token[0]
    assert (frame0 - others).abs().max() > 1e-3  # frame 0's camera token is not the others'
    # frame blocks are not tied: only cross-view attention gets the matching prior
    qkv = model.aggregator.frame_blocks[0].attn.qkv.weight
    assert not torch.equal(qkv[: qkv.shape[1]], qkv[qkv.shape[1] : 2 * qkv.shape[1]])


def test_weight_decay_skips_gammas_norms_biases_and_tokens():
    from spark3r_stream.train.init import adamw_param_groups

    model = build_model("vggt-tiny", random_weights=True)
    decay, no_decay = adamw_param_groups([model], 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    skipped = {id(p) for p in no_decay["params"]}
    named = dict(model.named_parameters())
    for name in ("aggregator.global_blocks.0.ls1.gamma", "aggregator.camera_token", "aggregator.patch_embed.pos_embed"):
        assert id(named[name]) in skipped, name
    assert id(named["aggregator.global_blocks.0.attn.qkv.weight"]) not in skipped


def test_matching_head_targets_are_bilinear_over_patch_centres_and_score_like_the_regression():
    from spark3r_stream.train.losses import MatchingHead

    head = MatchingHead(8, (4, 4), 14)
    centres = head.centres
    targets = head.soft_targets(centres)
    torch.testing.assert_close(targets, torch.eye(16))  # a patch centre is all on its own patch
    between = head.soft_targets((centres[0] + centres[1]) / 2)
    assert between[0].item() == pytest.approx(0.5) and between[1].item() == pytest.approx(0.5)
    assert head.soft_targets(torch.tensor([[0.999, -0.999]])).sum().item() == pytest.approx(1.0)  # clamped corner
    # frame 1 shows frame 0 shifted by one patch to the right: a perfect matcher scores far below "no motion"
    batch = type("B", (), {})()
    batch.patch_uv = torch.stack([centres, centres + torch.tensor([28 / 55, 0.0])])[None]
    batch.patch_visible = torch.ones(1, 2, 16, dtype=bool)
    batch.patch_visible[0, 1, [3, 7, 11, 15]] = False  # the last column leaves the view
    cross_entropy, error, no_motion = head.losses(torch.randn(1, 2, 21, 8), 5, batch)
    assert cross_entropy.item() > 0 and no_motion.item() == pytest.approx(28 / 55)
    assert error.item() > 0.1  # an untrained head's expected position is near the image centre


def test_curve_table_reads_the_training_log(tmp_path, capsys):
    from spark3r_stream.train.curves import main

    log = tmp_path / "loss_log.jsonl"
    log.write_text("\n".join(json.dumps({"step": s, "lr": 1e-3, "corr_ratio": 1 - s / 1000}) for s in (50, 100, 200)))
    assert main([str(log), "--every", "100"]) == 0
    out = capsys.readouterr().out
    assert "| step | lr | corr_ratio |" in out and "| 200 | 0.001 | 0.8 |" in out and "| 50 |" not in out


def test_ship_weights_averages_several_checkpoints_and_refuses_another_model(tmp_path, monkeypatch):
    from safetensors import safe_open

    from spark3r_stream.errors import CheckpointError
    from spark3r_stream.train import trainer

    models = [build_model("vggt-tiny", random_weights=True) for _ in range(2)]
    with torch.no_grad():
        models[1].camera_head.embed_pose.weight.add_(1.0)
    paths = [tmp_path / f"weights_{step}.safetensors" for step in (5, 9)]
    for model, path, step in zip(models, paths, (5, 9), strict=True):
        trainer.save_weights(model, path, {"step": step, "preset": "vggt-tiny"})
    target = tmp_path / "vggt-tiny.safetensors"
    monkeypatch.setattr(trainer, "packaged_weights_path", lambda preset: target)
    trainer.ship_weights(paths, "vggt-tiny")
    with safe_open(str(target), "pt") as handle:
        assert json.loads(handle.metadata()["step"]) == 9  # training resumes after the latest of them
        assert json.loads(handle.metadata()["averaged_steps"]) == [5, 9]
        shipped = handle.get_tensor("camera_head.embed_pose.weight").float()
    mean = (models[0].camera_head.embed_pose.weight + 0.5).detach()
    torch.testing.assert_close(shipped, mean.half().float())

    other = tmp_path / "other.safetensors"
    trainer.save_weights(torch.nn.Linear(2, 2), other)
    with pytest.raises(CheckpointError, match="other.safetensors: its tensors differ"):
        trainer.average_weights([paths[0], other])
    with pytest.raises(CheckpointError, match="nowhere.safetensors: no such checkpoint file"):
        trainer.average_weights([paths[0], tmp_path / "nowhere.safetensors"])


def test_pick_scores_the_shipped_weights(capsys):
    from pathlib import Path

    import spark3r_stream.models
    from spark3r_stream.train import pick

    weights = str(Path(spark3r_stream.models.__file__).parent / "weights" / "vggt-tiny.safetensors")
    real = "synth:seed=900123,frames=4"  # any `spark3r eval` spec with ground truth, as the real folders
    soup = f"{weights}+{weights}"  # the average of a checkpoint with itself scores as the checkpoint
    assert pick.main([weights, soup, "--pairs", "2", "--sequences", "1", "--frames", "4", "--real", real]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("real sequences: 1; constant depth AbsRel") and "real: AbsRel" in out[1]
    rows = [line.split("|") for line in out[-2:]]
    assert rows[0][1].strip() == weights and len(rows[0]) == 10 and all(float(cell) > 0 for cell in rows[0][2:-1])
    assert rows[1][1].strip() == soup and rows[1][2:] == rows[0][2:]
