"""The citing papers' loss terms against hand-computed values; one training step per objective changes the weights.

Fixture used throughout, one token over a two-word vocabulary, sampled token 0:
  student p_S = (0.5, 0.5): log p_S(y) = ln 0.5 = -0.693147
  teacher p_T = (0.75, 0.25): log p_T(y) = ln 0.75 = -0.287682
  H(p_T) = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.562335
  KL(p_S || p_T) = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = 0.143841
"""

import math

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM
from trl.experimental.sdpo.loss_utils import compute_full_logit_self_distillation_loss

from ablate import data, models, objectives, train
from tests.conftest import alternating_reward

LOG_S, LOG_T, H_T, KL = -0.693147, -0.287682, 0.562335, 0.143841
STUDENT_LOGITS = torch.tensor([[[0.0, 0.0]]])
TEACHER_LOGITS = torch.tensor([[[math.log(3.0), 0.0]]])  # softmax -> (0.75, 0.25)
IDS = torch.tensor([[0]])
T = dict(abs=1e-5)


def t(*values):
    return torch.tensor([list(values)])


def test_token_stats_by_hand():
    s = objectives.token_stats(STUDENT_LOGITS.clone().requires_grad_(), TEACHER_LOGITS, IDS)
    assert s["student_logp"].item() == pytest.approx(LOG_S, **T)
    assert s["teacher_logp"].item() == pytest.approx(LOG_T, **T)
    assert s["teacher_entropy"].item() == pytest.approx(H_T, **T)
    assert s["reverse_kl"].item() == pytest.approx(KL, **T)
    assert s["student_logp"].requires_grad and not s["teacher_logp"].requires_grad


def test_masked_mean_and_all_masked():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    # row 0: (1 + 2) / 2 = 1.5; row 1 fully masked counts 0; mean over rows = 0.75
    assert objectives.masked_mean(x, torch.tensor([[1, 1, 0], [0, 0, 0]])).item() == pytest.approx(0.75)
    zero = objectives.masked_mean(x, torch.zeros(2, 3))
    assert torch.isfinite(zero) and zero.item() == 0.0


def test_egrsd_weights_by_hand():
    kw = dict(ratio_clip=2.0, entropy_floor=0.1, max_entropy=math.log(2))
    # gate = 1 - 0.562335 / 0.693147 = 0.188722; ratio p_T/p_S = 0.75/0.5 = 1.5
    w = objectives.egrsd_weights(t(LOG_S, LOG_S), t(LOG_T, LOG_T), t(H_T, H_T), torch.tensor([1.0]), **kw)
    assert w[0, 0].item() == pytest.approx(1.5 * 0.188722, abs=1e-5)  # success: +, ratio 1.5
    w = objectives.egrsd_weights(t(LOG_S), t(LOG_T), t(H_T), torch.tensor([0.0]), **kw)
    assert w.item() == pytest.approx(-0.188722 / 1.5, abs=1e-5)  # failure: -, ratio p_S/p_T = 1/1.5
    # the ratio is capped: failure on a token the teacher gives 0.1 vs student 0.5 -> ratio 5 -> cap 2
    w = objectives.egrsd_weights(t(LOG_S), t(math.log(0.1)), t(0.0), torch.tensor([0.0]), **kw)
    assert w.item() == pytest.approx(-2.0, abs=1e-5)


def test_egrsd_entropy_gate_edges():
    kw = dict(ratio_clip=2.0, entropy_floor=0.1, max_entropy=math.log(2))
    # zero-entropy teacher: gate 1, weight = ratio; maximum-entropy teacher: the floor 0.1, never 0
    w = objectives.egrsd_weights(t(LOG_S, LOG_S), t(LOG_T, LOG_T), t(0.0, math.log(2)), torch.tensor([1.0]), **kw)
    assert w[0].tolist() == pytest.approx([1.5, 0.15], abs=1e-5)


def test_policy_gradient_loss_gradient_is_minus_weight():
    logp = torch.tensor([[LOG_S, LOG_S]], requires_grad=True)
    objectives.policy_gradient_loss(torch.tensor([[0.3, -2.0]]), logp).sum().backward()
    assert logp.grad[0].tolist() == pytest.approx([-0.3, 2.0])


def test_vopd_advantage_by_hand():
    s = objectives.token_stats(STUDENT_LOGITS, TEACHER_LOGITS, IDS)
    # reward ln(0.75/0.5) = 0.405465; + baseline KL 0.143841 = 0.549306
    a = objectives.vopd_advantages(s["student_logp"], s["teacher_logp"], s["reverse_kl"], baseline=True)
    assert a.item() == pytest.approx(0.549306, **T)
    a = objectives.vopd_advantages(s["student_logp"], s["teacher_logp"], s["reverse_kl"], baseline=False)
    assert a.item() == pytest.approx(0.405465, **T)


def test_vopd_baseline_is_the_value():
    """Averaged over the student's own distribution, the vOPD advantage is zero (V_t is the expected reward)."""
    student, teacher = torch.tensor([[[0.3, -1.2, 2.0]]]), torch.tensor([[[1.0, 0.5, -0.7]]])
    p = torch.softmax(student, -1)[0, 0]
    expected = sum(p[y] * objectives.vopd_advantages(
        **{k: v for k, v in objectives.token_stats(student, teacher, torch.tensor([[y]])).items()
           if k != "teacher_entropy"}, baseline=True) for y in range(3))
    assert expected.item() == pytest.approx(0.0, abs=1e-6)


def test_vopd_without_baseline_is_trl_sampled_token_opd():
    from trl.experimental.sdpo.loss_utils import compute_sampled_token_self_distillation_loss

    student, teacher, ids = torch.randn(2, 3, 5), torch.randn(2, 3, 5), torch.randint(0, 5, (2, 3))
    s = objectives.token_stats(student, teacher, ids)
    ours = objectives.policy_gradient_loss(
        objectives.vopd_advantages(s["student_logp"], s["teacher_logp"], s["reverse_kl"], baseline=False),
        s["student_logp"])
    trl = compute_sampled_token_self_distillation_loss(student, teacher, ids, distillation_alpha=1.0)
    assert torch.allclose(ours, trl, atol=1e-6)


def test_antisd_gate_and_sign():
    # mean entropy over unmasked tokens: 0.5 -> on; 0.0 (collapsed teacher) -> off; nothing unmasked -> off
    assert objectives.entropy_gate(t(0.5, 0.0), t(1, 0), entropy_threshold=0.1).item() == 1.0
    assert objectives.entropy_gate(t(0.5, 0.0), t(0, 1), entropy_threshold=0.1).item() == 0.0
    assert objectives.entropy_gate(t(0.5, 0.0), t(0, 0), entropy_threshold=0.1).item() == 0.0
    assert objectives.antisd_loss(t(0.2, 0.4), torch.tensor(1.0))[0].tolist() == pytest.approx([-0.2, -0.4])
    off = objectives.antisd_loss(t(0.2, 0.4), torch.tensor(0.0))
    assert torch.isfinite(off).all() and off.abs().sum().item() == 0.0


def test_antisd_step_increases_the_divergence():
    """A gradient step on the AntiSD loss moves the student away from the teacher (SDPO's step moves it closer)."""
    teacher = TEACHER_LOGITS

    def jsd(student):
        return compute_full_logit_self_distillation_loss(student, teacher, distillation_alpha=0.5)

    for sign in (-1.0, 1.0):  # -1: AntiSD (ascend), +1: SDPO (descend)
        student = STUDENT_LOGITS.clone().requires_grad_()
        loss = objectives.antisd_loss(jsd(student), torch.tensor(1.0)) if sign < 0 else jsd(student)
        loss.sum().backward()
        moved = jsd(STUDENT_LOGITS - 1.0 * student.grad)
        assert (moved.item() - jsd(STUDENT_LOGITS).item()) * sign < 0
    assert jsd(STUDENT_LOGITS).item() <= math.log(2)  # bounded per token


def test_rlrt_bonus_by_hand():
    kw = dict(bonus_coef=0.1, bonus_cap=5.0)
    # token 0: teacher 0.25 < student 0.5 -> 0.1 * ln 2 = 0.069315; token 1: teacher 0.75 predicted it -> 0
    b = objectives.rlrt_bonus(t(LOG_S, LOG_S), t(math.log(0.25), LOG_T), torch.tensor([1.0]), t(1, 1), **kw)
    assert b[0].tolist() == pytest.approx([0.069315, 0.0], abs=1e-6)
    # failed rollout: no bonus; cap: ln(0.5 / 1e-4) = 8.52 -> 5 -> 0.5
    assert objectives.rlrt_bonus(t(LOG_S), t(math.log(0.25)), torch.tensor([0.0]), t(1), **kw).item() == 0.0
    assert objectives.rlrt_bonus(t(LOG_S), t(math.log(1e-4)), torch.tensor([1.0]), t(1), **kw).item() == \
        pytest.approx(0.5)
    # no successful sibling (no teacher context): mask 0, no bonus
    assert objectives.rlrt_bonus(t(LOG_S), t(math.log(0.25)), torch.tensor([1.0]), t(0), **kw).item() == 0.0


def test_knobs_are_fields_of_the_objectives_trl_config(fast_cfg):
    from ablate import train

    cfg = OmegaConf.to_container(fast_cfg("objective=egrsd", "objective.trainer.entropy_floor=0.3"), resolve=True)
    config_cls, kwargs = train.trainer_args(cfg, "/tmp/out")
    assert config_cls is objectives.EGRSDConfig and config_cls(**kwargs).entropy_floor == 0.3
    typo = OmegaConf.to_container(fast_cfg("objective=egrsd", "+objective.trainer.ratio_clp=1.0"), resolve=True)
    with pytest.raises(ValueError, match="objective.trainer.ratio_clp: not a field of EGRSDConfig; did you mean "
                                         "ratio_clip"):
        train.trainer_args(typo, "/tmp/out")
    with pytest.raises(ValueError, match="objective.trainer.bonus_cap=0: must be > 0"):
        objectives.RLRTConfig(output_dir="/tmp/out", bonus_cap=0, use_cpu=True, bf16=False)


NEW = {"egrsd": "objective/weight_abs", "vopd": "objective/advantage", "antisd": "objective/gate",
       "rlrt": "objective/bonus"}


@pytest.mark.parametrize("objective", sorted(NEW))
def test_one_step_changes_parameters(objective, fast_cfg, tmp_path):
    cfg = OmegaConf.to_container(fast_cfg(f"objective={objective}", "richness=high",
                                          "objective.trainer.learning_rate=1e-2"), resolve=True)
    path = models.resolve_path(cfg["model"], cfg["cache_dir"])
    _, tokenizer = models.load(path)
    problems = data.select_coverage(data.load(cfg["data"]["source"], "data.source"), 8, 1, 0)
    before = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}
    trained, steps = train.train(cfg, path, tokenizer, problems, str(tmp_path / "out"),
                                 reward_funcs=[alternating_reward])
    after = trained.state_dict()
    assert any(not torch.equal(before[k], after[k].detach().cpu()) for k in before), f"{objective}: nothing changed"
    logged = {r["name"]: r["value"] for r in steps}
    assert logged.get(NEW[objective]), sorted(logged)  # the objective's own term ran and was not zero
    assert "teacher/prompt_tokens_mean" in logged  # richness built the teacher prompt
