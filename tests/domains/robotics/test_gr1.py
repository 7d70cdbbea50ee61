"""GR-1 and the BC baseline: the block-causal mask, causality and padding of the forward pass with history,
the perceiver resampler, the future-frame targets, video-only pretraining, the feature cache, losses that fall
on a tiny batch, and a Lightning fit on dataset-style batches."""
from __future__ import annotations

from typing import Dict, List

import lightning as L
import numpy as np
import pytest
import torch
from torch import Tensor, nn

from alignkit.core.collate import collate_samples
from alignkit.core.registry import MODELS, ConfigError
from alignkit.domains.robotics.models.bc import LCBCModule
from alignkit.domains.robotics.models.gr1 import GR1Module, gr1_attention_mask
from alignkit.domains.robotics.models.perceiver import PerceiverResampler
from alignkit.domains.robotics.models.policy_module import PolicyInputs

TINY_TEXT = {"name": "hf-text", "params": {"config": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
                                                      "num_attention_heads": 2, "intermediate_size": 64}}}
ENCODER = {"name": "voltron", "params": {"img_size": 16, "patch_size": 4, "width": 16, "depth": 1, "heads": 2,
                                         "text_encoder": TINY_TEXT}}
B, T, S, A = 3, 4, 5, 4


def tiny_gr1(**kw) -> GR1Module:
    torch.manual_seed(0)
    params = dict(cameras=["top", "wrist"], image_encoder=ENCODER, text_encoder=TINY_TEXT, state_dim=S,
                  action_dim=A, gripper_dims=[-1], history=T, width=32, depth=2, heads=2, num_latents=3,
                  perceiver_depth=1, perceiver_heads=2, image_size=16, frame_patch_size=8)
    return GR1Module(**{**params, **kw}).eval()


def batch(seed: int = 0, b: int = B, t: int = T) -> Dict[str, object]:
    g = torch.Generator().manual_seed(seed)
    gripper = torch.rand(b, t, 1, generator=g).round() * 2 - 1  # -1 or 1
    return {"observation.images.top": torch.rand(b, t, 3, 16, 16, generator=g),
            "observation.images.wrist": torch.rand(b, t, 3, 16, 16, generator=g),
            "observation.state": torch.randn(b, t, S, generator=g),
            "action": torch.cat([torch.randn(b, t, A - 1, generator=g), gripper], dim=-1),
            "pad_mask": torch.ones(b, t, dtype=torch.bool), "task": ["pick up the red block", "open the drawer",
                                                                     "push the button"][:b]}


def outputs(model: GR1Module, data: Dict[str, object]) -> Dict[str, Tensor]:
    with torch.no_grad():
        out = model(PolicyInputs.from_batch(data, model.cameras))
    return {"arm": out.actions.arm, "gripper": out.actions.gripper, "obs": out.obs_tokens}


# --------------------------------------------------------------------------- attention mask
def test_gr1_attention_mask_matches_a_loop():
    pad = torch.tensor([[False, True, True], [True, True, True]])
    steps, per_step, observed = 3, 4, 2
    mask = gr1_attention_mask(pad, per_step, observed)
    for b in range(2):
        for q in range(steps * per_step):
            for k in range(steps * per_step):
                (tq, _), (tk, jk) = divmod(q, per_step), divmod(k, per_step)
                expected = (jk < observed and tk <= tq and bool(pad[b, tk])) or q == k
                assert bool(mask[b, q, k]) == expected, (b, q, k)


# --------------------------------------------------------------------------- forward with history
def test_step_t_does_not_see_later_steps():
    model = tiny_gr1()
    data = batch(0)
    later = dict(data)
    for key in ("observation.images.top", "observation.images.wrist", "observation.state"):
        changed = data[key].clone()
        changed[:, 2:] = torch.rand_like(changed[:, 2:]) if key.startswith("observation.images") \
            else torch.randn_like(changed[:, 2:])
        later[key] = changed
    a, b = outputs(model, data), outputs(model, later)
    for name in ("arm", "gripper", "obs"):
        assert a[name].shape[1] == T
        torch.testing.assert_close(a[name][:, :2], b[name][:, :2])  # steps 0 and 1 unchanged
        assert not torch.allclose(a[name][:, 2:], b[name][:, 2:])


def test_padded_steps_do_not_affect_valid_steps():
    model = tiny_gr1()
    data = batch(1)
    data["pad_mask"] = torch.tensor([[False, False, True, True]] * B)
    other = dict(data)
    for key in ("observation.images.top", "observation.images.wrist", "observation.state"):
        changed = data[key].clone()
        changed[:, :2] = changed[:, :2] * -3 + 1
        other[key] = changed
    a, b = outputs(model, data), outputs(model, other)
    for name in ("arm", "gripper", "obs"):
        torch.testing.assert_close(a[name][:, 2:], b[name][:, 2:])
        assert torch.isfinite(a[name]).all()
    unpadded = outputs(model, {**data, "pad_mask": torch.ones(B, T, dtype=torch.bool)})
    assert not torch.allclose(a["arm"][:, 2:], unpadded["arm"][:, 2:])  # the mask is what hid them


def test_instruction_changes_the_actions():
    model = tiny_gr1()
    data = batch(2)
    a = outputs(model, data)["arm"]
    b = outputs(model, {**data, "task": ["open the drawer", "open the drawer", "push the button"]})["arm"]
    torch.testing.assert_close(a[2], b[2])
    assert not torch.allclose(a[0], b[0])


@pytest.mark.parametrize("positions", [True, "learned", False])
def test_patch_positions_tell_where_a_patch_lies(positions):
    """The resampler is blind to token order: only with patch_positions do actions change when the same patch
    features come in another spatial order (what "the ball on your left" needs)."""
    model = tiny_gr1(patch_positions=positions)
    data = batch(4)
    g = torch.Generator().manual_seed(0)
    n = 16  # ENCODER's patches of a 16-pixel frame
    feats = torch.randn(B, T, n, model.feature_dim, generator=g)
    order = torch.randperm(n, generator=g)

    def arm(tokens: Tensor) -> Tensor:
        model.image_tokens = lambda inputs, camera, last=False: tokens
        return outputs(model, data)["arm"]

    moved = arm(feats[:, :, order])
    if positions:
        assert not torch.allclose(arm(feats), moved, atol=1e-4)
        assert model.patch_position_embedding(n).shape == (n, 32)
    else:
        torch.testing.assert_close(arm(feats), moved, atol=1e-5, rtol=1e-4)
    if positions is True:
        assert model.patch_position_embedding(6).shape == (6, 32)  # not a square: one row
    if positions == "learned":  # one trained vector per patch of the encoder, in the optimiser's parameters
        assert model.learned_positions.requires_grad and model.learned_positions.shape == (n, 32)
        with pytest.raises(ValueError, match="learned 16 patch positions"):
            model.patch_position_embedding(6)


def test_perceiver_resampler_shape_and_mask():
    torch.manual_seed(0)
    resampler = PerceiverResampler(16, num_latents=5, depth=2, heads=2, dim_head=8)
    x = torch.randn(2, 7, 16)
    assert resampler(x).shape == (2, 5, 16)
    mask = torch.tensor([[True] * 4 + [False] * 3, [True] * 7])
    y = x.clone()
    y[0, 4:] = 100.0  # hidden by the mask
    torch.testing.assert_close(resampler(x, mask)[0], resampler(y, mask)[0])
    torch.testing.assert_close(resampler(x, mask)[0], resampler(x[:1, :4])[0])
    assert not torch.allclose(resampler(x, offset=torch.ones(2, 16)), resampler(x))
    with pytest.raises(ConfigError):
        PerceiverResampler(16, num_latents=0)


# --------------------------------------------------------------------------- losses
def test_frame_targets_are_the_next_valid_frames():
    model = tiny_gr1(frame_camera="wrist", norm_pixel_loss=False)
    data = batch(3)
    data["pad_mask"] = torch.tensor([[False, False, True, True]] * B)
    inputs = PolicyInputs.from_batch(data, model.cameras)
    inputs.images["wrist"] = inputs.images["wrist"].clone().requires_grad_(True)
    obs = model(inputs).obs_tokens
    model.frame_loss(obs, inputs).backward()
    grad = inputs.images["wrist"].grad.abs().flatten(2).sum(-1)  # (B, T): only targets get gradients
    assert torch.all(grad[:, :3] == 0) and torch.all(grad[:, 3] > 0)  # (2 -> 3) is the only valid pair
    short = PolicyInputs.from_batch(batch(3, t=1), model.cameras)
    assert model.frame_loss(model(short).obs_tokens, short).item() == 0.0


def test_video_objective_needs_no_actions():
    model = tiny_gr1(objective="video")
    data = batch(4)
    del data["action"]
    terms = model.compute_loss(data)
    assert set(terms) == {"frame", "loss"} and torch.equal(terms["loss"], terms["frame"])
    policy = tiny_gr1()
    policy.load_state_dict(model.state_dict())  # fine-tuning starts from the video-pretrained weights
    with pytest.raises(ConfigError, match="predict_frames"):
        tiny_gr1(objective="video", predict_frames=False)


def test_policy_loss_combines_weighted_terms():
    model = tiny_gr1(arm_weight=2.0, gripper_weight=0.5, frame_weight=0.25)
    terms = model.compute_loss(batch(5))
    torch.testing.assert_close(terms["action_loss"], 2.0 * terms["arm"] + 0.5 * terms["gripper"])
    torch.testing.assert_close(terms["loss"], terms["action_loss"] + 0.25 * terms["frame"])


def overfit(model: nn.Module, data: Dict[str, object], steps: int, lr: float = 3e-3) -> List[float]:
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model.compute_loss(data)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_gr1_loss_falls_on_a_tiny_batch():
    losses = overfit(tiny_gr1(feature_cache=True), {**batch(6), "episode_index": torch.arange(B),
                                                    "frame_index": torch.full((B,), 7)}, 40)
    assert losses[-1] < 0.5 * losses[0]


def test_discrete_actions_are_learned():
    model = tiny_gr1(cameras=["top"], state_dim=0, action_dim=1, gripper_dims=(), num_actions=5, predict_frames=False)
    data = batch(7)
    data["action"] = torch.tensor([[0, 1, 2, 3], [4, 3, 2, 1], [1, 1, 0, 0]], dtype=torch.float32)[..., None]
    losses = overfit(model, data, 40)
    assert losses[-1] < 0.2 * losses[0]
    assert model.compute_loss(data)["accuracy"].item() == 1.0
    with torch.no_grad():
        actions = model.predict_action(PolicyInputs.from_batch(data, ["top"]))
    assert torch.equal(actions, data["action"][:, -1])


def test_bc_baseline_reads_the_last_step_only():
    torch.manual_seed(0)
    model = LCBCModule(cameras=["top"], image_encoder={"name": "small-cnn", "params": {"widths": [8, 16]}},
                       text_encoder=TINY_TEXT, state_dim=S, action_dim=A, gripper_dims=[3], hidden_dim=32).eval()
    data = batch(8)
    earlier = {**data, "observation.images.top": data["observation.images.top"].clone()}
    earlier["observation.images.top"][:, :-1] = 0.0
    with torch.no_grad():
        a = model(PolicyInputs.from_batch(data, ["top"])).actions
        b = model(PolicyInputs.from_batch(earlier, ["top"])).actions
    assert a.arm.shape == (B, 1, A - 1) and a.gripper.shape == (B, 1, 1)
    torch.testing.assert_close(a.arm, b.arm)
    assert model.history == 1
    losses = overfit(model, data, 40)
    assert losses[-1] < 0.5 * losses[0]


class CountingEncoder(nn.Module):
    """A patch encoder that counts the frames it encodes."""

    output_dim = 12

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(48, 12)
        self.frames = 0

    def forward_tokens(self, x: Tensor) -> Tensor:
        self.frames += x.shape[0]
        return self.proj(x.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 1, 4, 5).reshape(x.shape[0], 16, 48))


def test_feature_cache_encodes_each_frame_once():
    encoder = CountingEncoder()
    model = tiny_gr1(cameras=["top"], image_encoder=encoder, feature_cache=True)
    data = {**batch(9), "episode_index": torch.tensor([0, 0, 1]), "frame_index": torch.tensor([0, 2, 5])}
    inputs = PolicyInputs.from_batch(data, ["top"])
    # windows show frames 0 0 0 0 | 0 0 1 2 | 2 3 4 5 of episodes 0, 0, 1 (pads repeat frame 0): 3 + 4 frames
    assert inputs.frame_ids[1].tolist() == [[0, 0], [0, 0], [0, 1], [0, 2]]
    table = {}
    for b, t in np.ndindex(B, T):  # the pixels a dataset would give for each (episode, frame)
        key = tuple(inputs.frame_ids[b, t].tolist())
        inputs.images["top"][b, t] = table.setdefault(key, torch.rand(3, 16, 16))
    model.train()
    first = model.image_tokens(inputs, "top")
    assert encoder.frames == 7
    again = model.image_tokens(inputs, "top")
    assert encoder.frames == 7
    torch.testing.assert_close(first, again)
    model.eval()  # evaluation and rollouts never use the cache
    direct = model.image_tokens(inputs, "top")
    assert encoder.frames == 7 + B * T
    torch.testing.assert_close(first[0], direct[0], atol=1e-2, rtol=1e-2)  # float16 storage
    with pytest.raises(ConfigError, match="freeze_image_encoder"):
        tiny_gr1(feature_cache=True, freeze_image_encoder=False)


def test_state_and_action_stats_standardise():
    stats = {"observation.state": {"mean": np.arange(S, dtype=np.float32), "std": np.full(S, 2.0, np.float32)},
             "action": {"mean": [1.0, 2.0, 3.0, 0.0], "std": [10.0, 10.0, 10.0, 1.0]}}
    model = tiny_gr1(stats=stats)
    torch.testing.assert_close(model.normalized_state(torch.arange(S, dtype=torch.float32) + 2), torch.ones(S))
    torch.testing.assert_close(model.action_head.arm_mean, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ConfigError, match="stats"):
        tiny_gr1(stats={"action": {"mean": [0.0, 1.0]}})


def test_lightning_fits_dataset_batches_and_checkpoints_reload(tmp_path):
    stats = {"observation.state": {"mean": np.zeros(S), "std": np.ones(S), "count": np.array([9])},
             "action": {"mean": np.zeros(A, np.float32), "std": np.full(A, 2.0, np.float32), "min": -np.ones(A)},
             "observation.images.top": {"mean": np.zeros((3, 1, 1))}}  # as LeRobotDataset.stats gives them
    params = dict(cameras=["top"], image_encoder=ENCODER, text_encoder=TINY_TEXT, state_dim=S, action_dim=A,
                  gripper_dims=[-1], history=T, width=32, depth=1, heads=2, num_latents=2, perceiver_depth=1,
                  perceiver_heads=2, image_size=16, frame_patch_size=8, feature_cache=True, stats=stats,
                  optim={"lr": 1e-3})
    model = MODELS.build("gr1", **params)
    items = []
    for i in range(4):
        b = batch(i, b=1)
        items.append({"observation.images.top": b["observation.images.top"][0], "observation.state":
                      b["observation.state"][0], "action": b["action"][0], "pad_mask": b["pad_mask"][0],
                      "task": b["task"][0], "episode_index": i, "frame_index": 3, "task_index": 0})
    loader = torch.utils.data.DataLoader(items, batch_size=2, collate_fn=collate_samples)
    trainer = L.Trainer(max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path))
    trainer.fit(model, loader)
    assert trainer.global_step == 2
    assert {"train/loss", "train/arm", "train/gripper", "train/frame"} <= set(trainer.callback_metrics)
    ckpt = torch.load(next(tmp_path.rglob("*.ckpt")), map_location="cpu", weights_only=True)
    again = MODELS.build("gr1", **ckpt["hyper_parameters"])
    again.load_state_dict(ckpt["state_dict"])
    torch.testing.assert_close(again.action_head.arm_std, torch.full((A - 1,), 2.0))


def test_feature_scale_multiplies_the_frozen_features():
    """feature_scale s on features f gives what scale 1 gives on s * f (the per-patch MLP's input), and it does
    change the actions."""
    data = batch(5)
    feats = torch.randn(B, T, 16, 16, generator=torch.Generator().manual_seed(1))

    def arm(model: GR1Module, tokens: Tensor) -> Tensor:
        model.image_tokens = lambda inputs, camera, last=False: tokens
        return outputs(model, data)["arm"]

    scaled = arm(tiny_gr1(feature_scale=2.0), feats)
    torch.testing.assert_close(scaled, arm(tiny_gr1(), 2 * feats))
    assert not torch.allclose(scaled, arm(tiny_gr1(), feats), atol=1e-4)


def test_bad_configurations_are_named():
    with pytest.raises(ConfigError, match="objective"):
        tiny_gr1(objective="videos")
    with pytest.raises(ConfigError, match="frame_camera"):
        tiny_gr1(frame_camera="side")
    with pytest.raises(ConfigError, match="discrete"):
        tiny_gr1(num_actions=4)
    with pytest.raises(ConfigError, match="forward_tokens"):
        tiny_gr1(image_encoder=nn.Linear(2, 2))
    with pytest.raises(ValueError, match="history of 4"):
        tiny_gr1()(PolicyInputs.from_batch(batch(0, t=5), ["top", "wrist"]))
    with pytest.raises(KeyError, match="observation.state"):
        data = batch(0)
        del data["observation.state"]
        tiny_gr1().compute_loss(data)


def test_padded_steps_are_not_encoded():
    model = tiny_gr1()
    data = batch(1)
    data["pad_mask"] = torch.tensor([[False, False, True, True]] * B)
    rows = []
    model.feature_proj.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[0]))
    outputs(model, data)
    assert rows == [2 * B] * len(model.cameras)  # the two valid steps of each window, per camera
