"""The action head (splitting, standardisation, losses, decoding) and the environment wrapper
:class:`LanguagePolicy` (history windows per environment, per-environment resets, batched and listed
observations), checked against dataset-style windows and in BabyAI rollouts."""
from __future__ import annotations

from typing import List

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.core.registry import ConfigError
from alignkit.domains.robotics.language_policy import LanguagePolicy
from alignkit.domains.robotics.models.action_head import ActionHead, ActionPrediction
from alignkit.domains.robotics.models.gr1 import GR1Module
from alignkit.domains.robotics.models.policy_module import PolicyInputs
from alignkit.domains.robotics.rollout import evaluate_policy

TINY_TEXT = {"name": "hf-text", "params": {"config": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
                                                      "num_attention_heads": 2, "intermediate_size": 64}}}


# --------------------------------------------------------------------------- action head
def test_action_head_standardises_arm_and_thresholds_gripper():
    stats = {"action": {"mean": [1.0, 0.0, -2.0], "std": [2.0, 1.0, 4.0]}}
    head = ActionHead(8, action_dim=3, gripper_dims=[1], gripper_threshold=0.5, gripper_values=(0.0, 1.0),
                      stats=stats)
    assert head.arm_dims == [0, 2] and head.gripper_dims == [1]
    action = torch.tensor([[[3.0, 0.9, 2.0], [1.0, 0.1, -2.0]]])  # (B=1, K=2, A=3)
    pred = ActionPrediction(arm=torch.tensor([[[1.0, 1.0], [0.0, 0.0]]]), gripper=torch.tensor([[[2.0], [-1.0]]]))
    terms = head.loss(pred, action, torch.ones(1, 2, dtype=torch.bool))
    assert terms["arm"].item() == pytest.approx(0.0)  # (3-1)/2 = 1, (2+2)/4 = 1; then both 0
    expected_bce = (F.softplus(torch.tensor(-2.0)) + F.softplus(torch.tensor(-1.0))) / 2  # targets 1 then 0
    torch.testing.assert_close(terms["gripper"], expected_bce)
    torch.testing.assert_close(head.decode(pred), torch.tensor([[[3.0, 1.0, 2.0], [1.0, 0.0, -2.0]]]))
    only_first = head.loss(pred, action, torch.tensor([[True, False]]))
    torch.testing.assert_close(only_first["gripper"], F.softplus(torch.tensor(-2.0)))
    assert head(torch.zeros(4, 2, 8)).arm.shape == (4, 2, 2)


def test_discrete_action_head():
    head = ActionHead(8, action_dim=1, num_actions=3)
    logits = torch.tensor([[[5.0, 0.0, 0.0], [0.0, 0.0, 5.0]]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    terms = head.loss(ActionPrediction(logits=logits), torch.tensor([[[0.0], [1.0]]]), valid)
    torch.testing.assert_close(terms["ce"], F.cross_entropy(logits[0], torch.tensor([0, 1])))
    assert terms["accuracy"].item() == 0.5
    assert torch.equal(head.decode(ActionPrediction(logits=logits)), torch.tensor([[[0.0], [2.0]]]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        head.loss(ActionPrediction(logits=logits), torch.full((1, 2, 1), 3.0), valid)
    with pytest.raises(ConfigError, match="out of range"):
        ActionHead(8, action_dim=3, gripper_dims=[3])


def test_discrete_actions_sampled_at_a_temperature():
    head = ActionHead(8, action_dim=1, num_actions=3)
    logits = torch.tensor([0.0, float(np.log(3.0)), 0.0]).expand(1, 20000, 3)  # softmax: 0.2, 0.6, 0.2
    pred = ActionPrediction(logits=logits)
    draws = head.decode(pred, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (1, 20000, 1)
    freq = torch.bincount(draws.flatten().long(), minlength=3) / 20000.0
    torch.testing.assert_close(freq, torch.tensor([0.2, 0.6, 0.2]), atol=0.015, rtol=0)
    # temperature 2 flattens the softmax: p ~ exp(z / 2) = 1, sqrt(3), 1
    hot = head.decode(pred, temperature=2.0, generator=torch.Generator().manual_seed(0))
    expected = torch.tensor([1.0, 3.0 ** 0.5, 1.0]) / (2 + 3.0 ** 0.5)
    torch.testing.assert_close(torch.bincount(hot.flatten().long(), minlength=3) / 20000.0, expected, atol=0.015,
                               rtol=0)
    again = head.decode(pred, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)  # seeded draws repeat
    assert torch.equal(head.decode(pred, temperature=0.0), torch.ones(1, 20000, 1))  # greedy: the argmax
    with pytest.raises(ValueError, match="temperature"):
        LanguagePolicy(RecordingModule(history=2, num_actions=3), temperature=-1.0)


# --------------------------------------------------------------------------- environment wrapper
class RecordingModule:
    """Stands in for a trained policy module: records the windows it is given, acts with constants."""

    def __init__(self, history: int, num_actions: int = 0, state_dim: int = 2, cameras=("cam",)):
        self.history, self.state_dim, self.cameras = history, state_dim, list(cameras)
        self.action_head = type("Head", (), {"num_actions": num_actions})()
        self.device = torch.device("cpu")
        self.windows: List[PolicyInputs] = []

    def eval(self) -> "RecordingModule":
        return self

    def encode_frames(self, frames: Tensor, texts: List[str]) -> Tensor:
        return frames[:, :1, :1, :1].flatten(1)[:, None]  # (M, 1 token, 1): the first pixel

    def predict_action(self, inputs: PolicyInputs, temperature: float = 0.0, generator=None) -> Tensor:
        self.windows.append(inputs)
        n = len(inputs.texts)
        return torch.full((n, 1), 2.0) if self.action_head.num_actions else torch.arange(n * 3.0).view(n, 3)


def observation(step: int, n: int = 2, size: int = 4) -> dict:
    """Env ``i``'s image at ``step`` is filled with ``10 * step + i``; its state is ``(step, i)``."""
    images = np.stack([np.full((size, size, 3), 10 * step + i, np.uint8) for i in range(n)])
    return {"images": {"cam": images}, "state": np.array([[step, i] for i in range(n)], np.float32)}


def window_values(inputs: PolicyInputs, env: int) -> List[int]:
    return [round(float(v) * 255) for v in inputs.images["cam"][env, :, 0, 0, 0]]


def test_history_windows_pad_like_the_dataset():
    module = RecordingModule(history=3)
    policy = LanguagePolicy(module)
    policy.reset(["go left", "go right"])
    for step in range(4):
        actions = policy.act(observation(step))
    assert actions.dtype == np.float32 and actions.shape == (2, 3)
    first, second, last = module.windows[0], module.windows[1], module.windows[-1]
    assert window_values(first, 1) == [1, 1, 1] and first.pad_mask[1].tolist() == [False, False, True]
    assert window_values(second, 0) == [0, 0, 10] and second.pad_mask[0].tolist() == [False, True, True]
    assert window_values(last, 1) == [11, 21, 31] and last.pad_mask.all()
    torch.testing.assert_close(last.features["cam"][:, :, 0, 0], last.images["cam"][:, :, 0, 0, 0])  # encoded once
    assert last.state[1, :, 0].tolist() == [1.0, 2.0, 3.0] and last.texts == ["go left", "go right"]


def test_resetting_one_environment_keeps_the_others():
    module = RecordingModule(history=2)
    policy = LanguagePolicy(module)
    policy.reset(["a", "b"])
    policy.act(observation(0))
    policy.act(observation(1))
    policy.reset("c", env_ids=[1])
    policy.act(observation(2))
    w = module.windows[-1]
    assert w.texts == ["a", "c"]
    assert window_values(w, 0) == [10, 20] and w.pad_mask[0].tolist() == [True, True]
    assert window_values(w, 1) == [21, 21] and w.pad_mask[1].tolist() == [False, True]
    with pytest.raises(IndexError, match="env_id 5"):
        policy.reset("d", env_ids=[5])
    with pytest.raises(ValueError, match="2 instructions for 1 env_ids"):
        policy.reset(["d", "e"], env_ids=[0])


def test_one_instruction_for_all_and_listed_observations():
    module = RecordingModule(history=2, num_actions=7)
    policy = LanguagePolicy(module, image_size=8)
    with pytest.raises(RuntimeError, match="reset"):
        policy.act(observation(0, n=3))
    policy.reset("pick up the key")
    obs = observation(0, n=3)
    listed = [{"images": {"cam": obs["images"]["cam"][i]}, "state": obs["state"][i]} for i in range(3)]
    actions = policy.act(listed)
    assert actions.dtype == np.int64 and actions.tolist() == [2, 2, 2]
    w = module.windows[-1]
    assert w.texts == ["pick up the key"] * 3 and w.images["cam"].shape == (3, 2, 3, 8, 8)  # resized
    with pytest.raises(ValueError, match="4 environments"):
        policy.act(observation(1, n=4))
    with pytest.raises(KeyError, match="cameras"):
        LanguagePolicy(RecordingModule(history=1, cameras=["top"])).act(observation(0))


def tiny_babyai_gr1() -> GR1Module:
    torch.manual_seed(0)
    encoder = {"name": "voltron", "params": {"img_size": 56, "patch_size": 8, "width": 16, "depth": 1, "heads": 2,
                                             "text_encoder": TINY_TEXT}}
    return GR1Module(cameras=["view"], image_encoder=encoder, text_encoder=TINY_TEXT, state_dim=6, action_dim=1,
                     num_actions=7, history=3, width=16, depth=1, heads=2, num_latents=2, perceiver_depth=1,
                     perceiver_heads=2, image_size=56, frame_patch_size=14).eval()


def test_policy_acts_as_the_module_does_on_dataset_windows():
    model = tiny_babyai_gr1()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (2, 5, 56, 56, 3), dtype=np.uint8)  # 2 episodes of 5 steps
    states = rng.normal(size=(2, 5, 6)).astype(np.float32)
    policy = LanguagePolicy(model)
    policy.reset(["pick up the red ball", "pick up a key"])
    for t in range(5):
        acted = policy.act({"images": {"view": frames[:, t]}, "state": states[:, t]})
        index = np.arange(t - 2, t + 1)
        window = PolicyInputs(images={"view": torch.from_numpy(frames[:, index.clip(0)]).permute(0, 1, 4, 2, 3) / 255},
                              texts=["pick up the red ball", "pick up a key"],
                              state=torch.from_numpy(states[:, index.clip(0)]),
                              pad_mask=torch.from_numpy(np.stack([index >= 0] * 2)))
        expected = model.predict_action(window)[:, 0].long().numpy()
        assert np.array_equal(acted, expected), t
    # sampling through the policy: the same seed repeats the same actions, all of them valid action ids
    runs = []
    for _ in range(2):
        sampler = LanguagePolicy(model, temperature=1.0, seed=3)
        sampler.reset(["pick up the red ball", "pick up a key"])
        runs.append([sampler.act({"images": {"view": frames[:, t]}, "state": states[:, t]}) for t in range(5)])
    assert all(np.array_equal(a, b) for a, b in zip(*runs))
    assert all(a.dtype == np.int64 and ((0 <= a) & (a < 7)).all() for a in runs[0])


def test_policy_runs_babyai_rollouts():
    spec = {"name": "babyai", "max_steps": 8}
    result = evaluate_policy(LanguagePolicy(tiny_babyai_gr1()), spec, n_episodes=3, num_envs=2)
    assert result.overall.episodes == 3 and 3 <= result.steps <= 24
