"""Per-token loss terms of the citing papers' objectives (tensors in, tensors out), and the TRL trainers using them.

Notation, per completion token t of rollout i (shape [batch, tokens]):
  student_logp  log p_S(y_t), the student on the plain prompt (carries the gradient)
  teacher_logp  log p_T(y_t), the same weights on the teacher prompt (richness context); never differentiated
  teacher_entropy  H(p_T(.|t));  reverse_kl  KL(p_S || p_T) at t over the vocabulary
  mask  1 where the token is a real completion token of a sample that has a teacher context (SDPO: a successful
        sibling), else 0;  success  1 for rollouts whose reward reaches SDPO's success_reward_threshold.

Each objective is an SDPOTrainer (TRL) whose distillation term, or for RLRT whose advantages, are replaced; the
teacher prompt, sibling selection, rollouts and GRPO term stay TRL's. Each objective's knobs are fields of its
config dataclass (a subclass of TRL's SDPOConfig), set like any TRL field in `objective.trainer`
(conf/objective/<name>.yaml), so TRL's own field check covers them; code never reads the objective's name.
"""

import math
from dataclasses import dataclass, field

import torch
from trl.experimental.sdpo import SDPOConfig, SDPOTrainer
from trl.experimental.sdpo.loss_utils import (
    apply_importance_sampling_clipping,
    compute_full_logit_self_distillation_loss,
    compute_topk_self_distillation_loss,
)
from trl.trainer.utils import selective_log_softmax

# --- pure loss terms ---


def token_stats(student_logits, teacher_logits, completion_ids) -> dict:
    """student_logp (with grad), and detached teacher_logp, teacher_entropy, reverse_kl, per completion token."""
    s_logprobs = torch.log_softmax(student_logits, dim=-1)
    t_logprobs = torch.log_softmax(teacher_logits.detach(), dim=-1)
    s_detached = s_logprobs.detach()
    return {
        "student_logp": selective_log_softmax(student_logits, completion_ids),
        "teacher_logp": t_logprobs.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1),
        "teacher_entropy": -(t_logprobs.exp() * t_logprobs).sum(-1),
        "reverse_kl": (s_detached.exp() * (s_detached - t_logprobs)).sum(-1),
    }


def masked_mean(per_token, mask):
    """Token mean per sequence, then mean over sequences (TRL's SDPO aggregation); 0 where nothing is unmasked."""
    mask = mask.to(per_token.dtype)
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def egrsd_weights(student_logp, teacher_logp, teacher_entropy, success, *, ratio_clip, entropy_floor, max_entropy):
    """EGRSD (Ke, Wen et al., arXiv 2605.13255) token weight = direction x ratio magnitude x entropy gate.

    The paper names the three factors; their forms below are this implementation's reading of it.

    direction: +1 on successful rollouts, -1 on failed ones (the reward-grounded sign).
    magnitude: the teacher/student likelihood ratio in that direction, exp(direction * (log p_T - log p_S)), capped at
      `ratio_clip`: a success reinforces most the tokens the teacher favours more than the student; a failure
      penalises most the tokens the teacher favours less.
    gate: 1 - H_T / max_entropy, floored at `entropy_floor` (> 0) so no token's weight vanishes: confident teacher
      positions count fully, uncertain ones down to the floor.
    """
    direction = (2.0 * success.to(student_logp.dtype) - 1.0).unsqueeze(-1)
    log_ratio = (teacher_logp - student_logp).detach()
    magnitude = torch.exp((direction * log_ratio).clamp(max=math.log(ratio_clip)))
    gate = (1.0 - teacher_entropy.detach() / max_entropy).clamp(min=entropy_floor, max=1.0)
    return direction * magnitude * gate


def policy_gradient_loss(weights, student_logp):
    """-w_t log p_S(y_t) with w_t detached: REINFORCE with a per-token advantage."""
    return -weights.detach() * student_logp


def vopd_advantages(student_logp, teacher_logp, reverse_kl, *, baseline: bool):
    """vOPD (Oh et al., "KL for a KL", arXiv 2605.07865) per-token advantage.

    On-policy distillation as policy gradient: the reward of token t is log p_T(y_t) - log p_S(y_t), whose expectation
    under the student is -KL(p_S || p_T)_t, the closed-form value V_t; subtracting it as a detached baseline keeps
    the gradient unbiased and lowers its variance: A_t = log p_T - log p_S + KL_t. `baseline=False` is vanilla OPD.
    """
    reward = (teacher_logp - student_logp).detach()
    return reward + reverse_kl.detach() if baseline else reward


def entropy_gate(teacher_entropy, mask, *, entropy_threshold):
    """AntiSD's gate: 1 while the teacher's mean entropy over unmasked tokens is >= the threshold, 0 once it collapses
    below it (and 0 when no token is unmasked). Per batch, as the paper turns the term off once the teacher collapses."""
    mask = mask.to(teacher_entropy.dtype)
    n = mask.sum()
    if n == 0:
        return torch.zeros((), dtype=teacher_entropy.dtype, device=teacher_entropy.device)
    mean = (teacher_entropy.detach() * mask).sum() / n
    return (mean >= entropy_threshold).to(teacher_entropy.dtype)


def antisd_loss(divergence, gate):
    """AntiSD (Shen et al., arXiv 2605.11609): ascend the student-teacher divergence (sign-flipped self-distillation),
    switched off by the entropy gate. With the bounded JSD (alpha 0.5) the per-token signal is bounded by log 2."""
    return -gate * divergence


def rlrt_bonus(student_logp, teacher_logp, success, mask, *, bonus_coef, bonus_cap):
    """RLRT (Kim, Jeon et al., "Rebellious Student", arXiv 2605.10781) per-token advantage bonus.

    On successful rollouts only, tokens the teacher did not predict (log p_T/p_S < 0, the student's self-driven
    choices) get bonus_coef * min(log p_S - log p_T, bonus_cap); every other token gets 0. Added to GRPO's advantage.
    The paper reinforces those tokens; this linear, capped bonus is this implementation's reading of how.
    """
    surprise = (student_logp - teacher_logp).detach().clamp(min=0.0, max=bonus_cap)
    return bonus_coef * success.to(surprise.dtype).unsqueeze(-1) * mask.to(surprise.dtype) * surprise


# --- trainers ---


def _positive(config, *names: str) -> None:
    for name in names:
        if not getattr(config, name) > 0:
            raise ValueError(f"objective.trainer.{name}={getattr(config, name)}: must be > 0")


@dataclass
class EGRSDConfig(SDPOConfig):
    ratio_clip: float = field(default=2.0, metadata={"help": "EGRSD: cap on the likelihood-ratio magnitude "
                                                               "exp(+-(log p_T - log p_S)) per token."})
    entropy_floor: float = field(default=0.1, metadata={"help": "EGRSD: lower bound of the entropy gate "
                                                                  "1 - H_T/log|V|; high-entropy tokens keep this weight."})

    def __post_init__(self):
        super().__post_init__()
        _positive(self, "ratio_clip", "entropy_floor")


@dataclass
class VOPDConfig(SDPOConfig):
    baseline: bool = field(default=True, metadata={"help": "vOPD: subtract V_t = -KL_t; false gives vanilla "
                                                             "sampled-token OPD."})


@dataclass
class AntiSDConfig(SDPOConfig):
    entropy_threshold: float = field(default=0.1, metadata={"help": "AntiSD: nats; the term is off while the "
                                                                      "teacher's mean token entropy is below this."})

    def __post_init__(self):
        super().__post_init__()
        if self.distillation_mode not in ("topk_logits", "full_logits"):
            raise ValueError(f"objective.trainer.distillation_mode={self.distillation_mode!r}: AntiSD ascends a "
                             "divergence over a token support; choose topk_logits or full_logits")


@dataclass
class RLRTConfig(SDPOConfig):
    bonus_coef: float = field(default=0.1, metadata={"help": "RLRT: bonus per nat of log p_S - log p_T, added to "
                                                               "the rollout's GRPO advantage."})
    bonus_cap: float = field(default=5.0, metadata={"help": "RLRT: nats; caps one token's bonus at "
                                                              "bonus_coef * bonus_cap."})

    def __post_init__(self):
        super().__post_init__()
        _positive(self, "bonus_cap")


class ObjectiveTrainer(SDPOTrainer):
    """SDPOTrainer whose distillation term is `_per_token_loss`; the knobs are fields of `self.args`."""

    def _success(self, inputs):
        return (inputs["rewards"] >= self.args.success_reward_threshold).to(inputs["completion_mask"].dtype)

    def _log(self, model, name: str, values, mask) -> None:
        mode = "train" if model.training else "eval"
        mask = mask.to(values.dtype)
        self._metrics[mode][f"objective/{name}"].append(((values * mask).sum() / mask.sum().clamp(min=1.0)).item())

    def _per_token_loss(self, model, inputs, logits, stats):
        raise NotImplementedError

    def _compute_self_distillation_loss(self, model, inputs, distillation_logits):
        """TRL's SDPO distillation term with the per-token loss replaced; the same IS clipping and aggregation."""
        d = distillation_logits
        if d.loss_mask.sum() == 0:  # no sample has a teacher context: a zero loss that still reaches the graph
            self._log_self_distillation_metric("train" if model.training else "eval", 0.0)
            return d.student_logits.sum() * 0.0
        stats = token_stats(d.student_logits, d.teacher_logits, d.completion_ids)
        self._log(model, "teacher_entropy", stats["teacher_entropy"], d.loss_mask)
        per_token_loss = self._per_token_loss(model, inputs, d, stats)
        old = inputs.get("old_per_token_logps")
        if self.args.distillation_is_clip is not None and old is not None:
            per_token_loss = apply_importance_sampling_clipping(per_token_loss, stats["student_logp"], old,
                                                                self.args.distillation_is_clip)
        loss = masked_mean(per_token_loss, d.loss_mask)
        mean = (per_token_loss * d.loss_mask).sum() / d.loss_mask.sum().clamp(min=1.0)
        self._log_self_distillation_metric("train" if model.training else "eval",
                                           self.accelerator.gather(mean.detach()).mean().item())
        return loss


class EGRSDTrainer(ObjectiveTrainer):
    def _per_token_loss(self, model, inputs, d, stats):
        k = self.args
        w = egrsd_weights(stats["student_logp"], stats["teacher_logp"], stats["teacher_entropy"], self._success(inputs),
                          ratio_clip=k.ratio_clip, entropy_floor=k.entropy_floor,
                          max_entropy=math.log(d.student_logits.size(-1)))
        self._log(model, "weight_abs", w.abs(), d.loss_mask)
        return policy_gradient_loss(w, stats["student_logp"])


class VOPDTrainer(ObjectiveTrainer):
    def _per_token_loss(self, model, inputs, d, stats):
        a = vopd_advantages(stats["student_logp"], stats["teacher_logp"], stats["reverse_kl"],
                            baseline=self.args.baseline)
        self._log(model, "advantage", a, d.loss_mask)
        return policy_gradient_loss(a, stats["student_logp"])


class AntiSDTrainer(ObjectiveTrainer):
    def _per_token_loss(self, model, inputs, d, stats):
        a = self.args
        if a.distillation_mode == "topk_logits":
            div = compute_topk_self_distillation_loss(d.student_logits, d.teacher_logits,
                                                      distillation_topk=a.distillation_topk,
                                                      distillation_alpha=a.distillation_alpha,
                                                      distillation_add_tail=a.distillation_add_tail)
        else:  # full_logits (AntiSDConfig refuses the rest)
            div = compute_full_logit_self_distillation_loss(d.student_logits, d.teacher_logits,
                                                            distillation_alpha=a.distillation_alpha)
        gate = entropy_gate(stats["teacher_entropy"], d.loss_mask,
                            entropy_threshold=self.args.entropy_threshold)
        self._metrics["train" if model.training else "eval"]["objective/gate"].append(gate.item())
        return antisd_loss(div, gate)


class RLRTTrainer(ObjectiveTrainer):
    """GRPO whose per-token advantages carry the RLRT bonus; the teacher is only read, never distilled from."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise ValueError("RLRTTrainer does not return outputs")
        d = self._compute_teacher_student_logits(model, self.teacher_model, inputs)
        student_logp = selective_log_softmax(d.student_logits, d.completion_ids)
        teacher_logp = selective_log_softmax(d.teacher_logits, d.completion_ids)
        bonus = rlrt_bonus(student_logp, teacher_logp, self._success(inputs), d.loss_mask,
                           bonus_coef=self.args.bonus_coef, bonus_cap=self.args.bonus_cap)
        self._log(model, "bonus", bonus, d.completion_mask)
        advantages = inputs["advantages"].unsqueeze(1) + bonus  # TRL's policy loss takes [batch, tokens] advantages
        loss = self._compute_policy_loss({**inputs, "advantages": advantages}, d.student_logits)
        return loss / (self.current_gradient_accumulation_steps if self.model.training else 1.0)
