"""Training: one TRL trainer per objective, with the teacher's context set by richness."""

import dataclasses
import difflib
import math
import os

import torch
from datasets import Dataset
from transformers import PrinterCallback, ProgressCallback, TrainerCallback

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer  # noqa: E402
from trl.experimental.sdft import SDFTConfig, SDFTTrainer  # noqa: E402
from trl.experimental.sdft.sdft_trainer import DemonstrationTeacherContextBuilder  # noqa: E402
from trl.experimental.sdpo import SDPOConfig, SDPOTrainer  # noqa: E402
from trl.experimental.sdpo.sdpo_trainer import SuccessfulRolloutTeacherContextBuilder  # noqa: E402

from ablate import check_stop, engines, grading, models, search, sft, teacher  # noqa: E402
from ablate.markers import count_markers  # noqa: E402
from ablate.objectives import (  # noqa: E402
    AntiSDConfig,
    AntiSDTrainer,
    EGRSDConfig,
    EGRSDTrainer,
    RLRTConfig,
    RLRTTrainer,
    VOPDConfig,
    VOPDTrainer,
)
from ablate.problem import Problem  # noqa: E402

# Sent to SDPO as "environment feedback" so that, with richness none and a dataset source, every sample is
# distilled; the builder below ignores its text.
_NO_CONTEXT = "(no context)"


class TeacherContextTooLong(ValueError):
    pass


def trainer_args(cfg: dict, output_dir: str) -> tuple[type, dict]:
    """(TRL config class, its kwargs): trainer < model.trainer < objective.trainer, checked against the class
    (an objective's own knobs are fields of it)."""
    kind = cfg["objective"]["trainer_class"]
    if kind not in TRAINERS:
        raise ValueError(f"objective.trainer_class={kind!r}: choose from {', '.join(TRAINERS)}")
    family = TRAINERS[kind]
    fields = {f.name for f in dataclasses.fields(family.config)}
    known = set().union(*({f.name for f in dataclasses.fields(f.config)} for f in TRAINERS.values()))
    kwargs: dict = {}
    for section, values, strict in (("trainer", cfg["trainer"], False), ("model.trainer", cfg["model"].get("trainer"), False),
                                    ("objective.trainer", cfg["objective"]["trainer"], True)):
        for key, value in (values or {}).items():
            if key in fields:
                kwargs[key] = value
            elif strict or key not in known:  # shared sections may hold fields of another objective's trainer
                close = difflib.get_close_matches(key, fields, n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise ValueError(f"{section}.{key}: not a field of {family.config.__name__}{hint}")
    kwargs.update(output_dir=output_dir, seed=cfg["seed"], use_cpu=not torch.cuda.is_available())
    # Rollouts use the same chat template settings (Qwen3 enable_thinking) and dtype as evaluation.
    if cfg["model"].get("chat_template_kwargs") and "chat_template_kwargs" in fields:  # SFT: a dataset column
        kwargs.setdefault("chat_template_kwargs", dict(cfg["model"]["chat_template_kwargs"]))
    kwargs.setdefault("model_init_kwargs", {"dtype": cfg["model"].get("dtype", "float32")})
    if kwargs.get("use_vllm"):  # TRL's rollouts on vLLM (colocate): its engine takes the model's engine settings
        engines.check("vllm", "trainer.use_vllm=true")
        kwargs = {**engines.trl_args(cfg["model"].get("engine"), fields), **kwargs}
    if cfg["objective"]["context_source"] is not None and cfg["richness"]["source"] not in ("sibling", "reference"):
        raise ValueError(f"richness.source={cfg['richness']['source']!r}: choose sibling or reference")
    return family.config, family.config_kwargs(cfg, kwargs)


def dataset_rows(problems: list[Problem], richness: dict, tcfg: dict) -> list[dict]:
    """Training rows: chat prompt, gold answer and, for a dataset-sourced teacher, the privileged context."""
    rows = []
    for p in problems:
        row = {"prompt": p.messages(), "answer": p.answer, "grader": p.grader, "problem_id": p.id}
        if richness["source"] == "reference":
            try:
                context = teacher.context_text(p.solution, richness["content"], p.answer, tcfg["answer_template"])
            except ValueError as err:
                raise ValueError(f"richness={richness['name']} with source=reference: problem {p.id}: {err}; "
                                 "use a data set with reference solutions or richness.source=sibling") from None
            row["privileged_context"] = _NO_CONTEXT if context is None else context
        rows.append(row)
    return rows


class _RichnessMixin:
    """Builds the teacher prompt with ablate.teacher and refuses to truncate it."""

    def _teacher_text(self, prompt_text: str, context: str) -> str:
        r, t = self.richness, self.tcfg
        if r["content"] == "none":
            return prompt_text
        if r["source"] == "sibling":  # `context` is a raw successful sibling rollout
            return teacher.teacher_prompt(prompt_text, context, r["content"], None, t["template"], t["answer_template"])
        return t["template"].format(prompt=prompt_text, context=context)  # already cut to richness

    def _check_lengths(self, ids_list: list[list[int]], limit: int | None) -> None:
        lengths = [len(ids) for ids in ids_list]
        if limit is not None and max(lengths) > limit:
            raise TeacherContextTooLong(
                f"a teacher prompt has {max(lengths)} tokens > max_prompt_length={limit}: TRL would silently "
                "truncate the privileged context; raise trainer.max_prompt_length or use a lower richness")
        metrics = self.trainer._metrics["train" if self.trainer.model.training else "eval"]
        if lengths:  # teacher-context token lengths, logged with TRL's metrics each step
            metrics["teacher/prompt_tokens_mean"].append(sum(lengths) / len(lengths))
            metrics["teacher/prompt_tokens_max"].append(float(max(lengths)))


class RichnessSDPOBuilder(_RichnessMixin, SuccessfulRolloutTeacherContextBuilder):
    def __init__(self, trainer, richness: dict, tcfg: dict):
        super().__init__(trainer)
        self.richness, self.tcfg = richness, tcfg

    def _build_reprompt_text(self, prompt_text: str, solution_text: str, feedback_text: str) -> str:
        return self._teacher_text(prompt_text, solution_text or feedback_text)

    def _tokenize_teacher_messages(self, teacher_messages_list):
        ids = self.trainer._tokenize_prompts_untruncated(teacher_messages_list)
        self._check_lengths(ids, self.trainer.args.max_reprompt_len)
        return super()._tokenize_teacher_messages(teacher_messages_list)


class RichnessSDFTBuilder(_RichnessMixin, DemonstrationTeacherContextBuilder):
    def __init__(self, trainer, richness: dict, tcfg: dict):
        super().__init__(trainer)
        self.richness, self.tcfg = richness, tcfg

    def _compose_teacher_prompt(self, prompt, privileged_context):
        text = self._teacher_text(prompt[-1]["content"], privileged_context)
        return prompt[:-1] + [{"role": "user", "content": text}]

    def build(self, prompts, privileged_contexts, completion_ids, completion_mask):
        teacher_prompts = [self._compose_teacher_prompt(p, c) for p, c in zip(prompts, privileged_contexts, strict=True)]
        tok = self.trainer.processing_class
        ids = tok.apply_chat_template(teacher_prompts, add_generation_prompt=True, tokenize=True, return_dict=True,
                                      **self.trainer.chat_template_kwargs)["input_ids"]
        self._check_lengths(ids, self.trainer.args.max_prompt_length)
        return super().build(prompts, privileged_contexts, completion_ids, completion_mask)


class QuietProgress(ProgressCallback):
    """The step progress bar without a dict printed per step (the numbers go to the database)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


# Each trainer names the same quantity its own way; these canonical names are recorded beside TRL's.
CANONICAL = {
    "rewards/reward/mean": "rollout/reward", "self_distillation/rewards/reward": "rollout/reward",
    "rewards/markers/mean": "rollout/markers_per_response",
    "self_distillation/rewards/markers": "rollout/markers_per_response",
    "markers/mean": "rollout/markers_per_response",
    "completions/mean_length": "rollout/mean_length",
}


class StepRecorder(TrainerCallback):
    """Collects every number the trainer logs, by step, for the train_steps table (plus CANONICAL names)."""

    def __init__(self):
        self.rows: list[dict] = []

    def on_step_end(self, args, state, control, **kwargs):
        check_stop()

    def on_log(self, args, state, control, logs=None, **kwargs):
        for name, value in (logs or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                v = None if math.isnan(float(value)) else float(value)
                self.rows.append({"step": state.global_step, "name": name, "value": v})
                if name in CANONICAL:
                    self.rows.append({"step": state.global_step, "name": CANONICAL[name], "value": v})


def marker_reward(words, mode: str):
    """Markers per rollout as a zero-weight TRL reward: TRL logs its mean per step (rewards/markers/mean)."""

    def markers(completions, **_) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(sum(count_markers(t, words, mode).values())) for t in texts]

    return markers


class MarkerLogger(TrainerCallback):
    """SDFT has no rewards: log markers per rollout from the batch it prepares."""

    def __init__(self, words, mode: str):
        self.words, self.mode, self.trainer = words, mode, None

    def on_self_distillation_batch_prepared(self, completion_ids=None, processing_class=None, **_):
        texts = processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        counts = [sum(count_markers(t, self.words, self.mode).values()) for t in texts]
        self.trainer._metrics["train"]["markers/mean"].append(sum(counts) / max(len(counts), 1))


def _quiet(trainer):
    """No dict printed per step (the numbers go to the database); the step progress bar stays."""
    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietProgress)
    return trainer


class Family:
    """How one family of TRL trainers is configured and built: GRPO-style rollouts with rewards (GRPO, and SDPO
    with its teacher), SDFT's demonstrations, SFT on the model's own solutions. One adapter per family."""

    def __init__(self, config: type, trainer: type):
        self.config, self.trainer = config, trainer

    def config_kwargs(self, cfg: dict, kwargs: dict) -> dict:
        return kwargs

    def build(self, cfg, model_path, tokenizer, problems, kwargs, reward_funcs, callbacks):
        raise NotImplementedError


def _common(cfg, model_path, tokenizer, rows, args, callbacks) -> dict:
    common = dict(model=str(model_path), args=args, train_dataset=Dataset.from_list(rows),
                  processing_class=tokenizer, callbacks=list(callbacks))
    if cfg["model"].get("lora"):  # LoRA adapters instead of a full fine-tune (OPSD's way to fit 8B on one GPU)
        common["peft_config"] = models.lora_config(cfg["model"])
    return common


class Rollouts(Family):
    """GRPOTrainer and its subclasses: rewards (correctness, plus markers per rollout at weight 0 so that every
    step logs the rollouts' epistemic-marker rate)."""

    def build(self, cfg, model_path, tokenizer, problems, kwargs, reward_funcs, callbacks):
        ev = cfg["eval"]["markers"]
        reward_funcs = list(reward_funcs or [grading.reward])
        if "reward_weights" not in kwargs:
            reward_funcs.append(marker_reward(ev["words"], ev["mode"]))
            kwargs = {**kwargs, "reward_weights": [1.0] * (len(reward_funcs) - 1) + [0.0]}
        rows = dataset_rows(problems, cfg["richness"], cfg["teacher"])
        return self.trainer(reward_funcs=reward_funcs,
                            **_common(cfg, model_path, tokenizer, rows, self.config(**kwargs), callbacks))


class SelfDistillation(Rollouts):
    """SDPOTrainer and the citing papers' objectives: rollouts whose teacher prompt RichnessSDPOBuilder builds."""

    def config_kwargs(self, cfg, kwargs):
        source = cfg["richness"]["source"]
        # The teacher prompt is built by RichnessSDPOBuilder from the raw demonstration; by default it has room
        # for the prompt, a full-length demonstration and the template.
        kwargs.setdefault("max_reprompt_len", (kwargs.get("max_prompt_length") or 2048)
                          + (kwargs.get("max_completion_length") or 1024) + 64)
        return {**kwargs, "solution_template": "{successful_previous_attempt}", "feedback_template": "{feedback_raw}",
                "use_successful_as_teacher": source == "sibling", "include_environment_feedback": source == "reference"}

    def build(self, cfg, model_path, tokenizer, problems, kwargs, reward_funcs, callbacks):
        trainer = super().build(cfg, model_path, tokenizer, problems, kwargs, reward_funcs, callbacks)
        trainer.teacher_context_builder = RichnessSDPOBuilder(trainer, cfg["richness"], cfg["teacher"])
        return trainer


class Demonstrations(Family):
    """SDFTTrainer: the teacher's context comes from the dataset (richness.source=reference); no rewards, so a
    callback logs the rollouts' markers."""

    def config_kwargs(self, cfg, kwargs):
        return {**kwargs, "teacher_prompt_template": "{prompt}{privileged_context}"}  # unused: the builder composes

    def build(self, cfg, model_path, tokenizer, problems, kwargs, reward_funcs, callbacks):
        rows = dataset_rows(problems, cfg["richness"], cfg["teacher"])
        if "privileged_context" not in rows[0]:
            raise ValueError(f"objective={cfg['objective']['name']} reads its teacher context from the dataset: "
                             "set richness.source=reference")
        logger = MarkerLogger(cfg["eval"]["markers"]["words"], cfg["eval"]["markers"]["mode"])
        trainer = self.trainer(**_common(cfg, model_path, tokenizer, rows, self.config(**kwargs),
                                         [*callbacks, logger]))
        logger.trainer = trainer
        trainer.teacher_context_builder = RichnessSDFTBuilder(trainer, cfg["richness"], cfg["teacher"])
        return trainer


class OwnSolutions(Family):
    """SFTTrainer on the starting model's own correct responses, sampled once before training (ablate.sft)."""

    def build(self, cfg, model_path, tokenizer, problems, kwargs, reward_funcs, callbacks):
        rows, stats = sft.build_rows(cfg, model_path, problems)
        trainer = self.trainer(**_common(cfg, model_path, tokenizer, rows, self.config(**kwargs), callbacks))
        trainer.callback_handler.on_log(trainer.args, trainer.state, trainer.control, logs=stats)  # step 0
        return trainer


# objective.trainer_class -> the family that builds it, with its TRL config and trainer classes
TRAINERS = {"grpo": Rollouts(GRPOConfig, GRPOTrainer), "sdpo": SelfDistillation(SDPOConfig, SDPOTrainer),
            "sdft": Demonstrations(SDFTConfig, SDFTTrainer),
            # the citing papers' objectives (ablate/objectives.py): SDPO with its loss term and knobs replaced
            "egrsd": SelfDistillation(EGRSDConfig, EGRSDTrainer), "vopd": SelfDistillation(VOPDConfig, VOPDTrainer),
            "antisd": SelfDistillation(AntiSDConfig, AntiSDTrainer), "rlrt": SelfDistillation(RLRTConfig, RLRTTrainer),
            "sft": OwnSolutions(SFTConfig, SFTTrainer)}


def build_trainer(cfg: dict, model_path, tokenizer, problems: list[Problem], output_dir: str,
                  reward_funcs=None, callbacks=()):
    """The TRL trainer for cfg.objective on `problems`, teacher context by cfg.richness; `reward_funcs` default to
    math-verify correctness."""
    _, kwargs = trainer_args(cfg, output_dir)
    family = TRAINERS[cfg["objective"]["trainer_class"]]
    return _quiet(family.build(cfg, model_path, tokenizer, problems, kwargs, reward_funcs, callbacks))


def check_teacher_prompts(cfg: dict, tokenizer, problems: list[Problem], limit: int | None) -> None:
    """Before training, fail if a dataset-sourced teacher prompt would be truncated to `limit` tokens."""
    r, t = cfg["richness"], cfg["teacher"]
    if limit is None or cfg["objective"]["context_source"] is None or r["source"] != "reference":
        return
    rows = dataset_rows(problems, r, t)
    texts = [row["prompt"][:-1] + [{"role": "user", "content": t["template"].format(
        prompt=row["prompt"][-1]["content"], context=row["privileged_context"])}] for row in rows]
    ids = tokenizer.apply_chat_template(texts, add_generation_prompt=True, tokenize=True, return_dict=True,
                                        **(cfg["model"].get("chat_template_kwargs") or {}))["input_ids"]
    longest = max(range(len(ids)), key=lambda i: len(ids[i]))
    if len(ids[longest]) > limit:
        raise TeacherContextTooLong(
            f"problem {rows[longest]['problem_id']}: teacher prompt has {len(ids[longest])} tokens > "
            f"max_prompt_length={limit}: TRL would silently truncate the privileged context; raise "
            "trainer.max_prompt_length or use a lower richness")


def train(cfg: dict, model_path, tokenizer, problems: list[Problem], output_dir: str, reward_funcs=None):
    """Train with cfg.objective; returns (trained model, per-step log rows)."""
    recorder = StepRecorder()
    callbacks = [recorder, *search.trial_callbacks(cfg, recorder.rows)]  # a search trial reports each step; may be pruned
    engines.before_training(trainer_args(cfg, output_dir)[1].get("use_vllm", False))  # frees an engine's memory
    trainer = build_trainer(cfg, model_path, tokenizer, problems, output_dir, reward_funcs, callbacks)
    engines.adopt(trainer, cfg["model"].get("engine"))  # vLLM rollouts: their engine serves the trained evaluation
    check_teacher_prompts(cfg, tokenizer, problems, getattr(trainer.args, "max_prompt_length", None))
    trainer.train()
    return trainer.model, recorder.rows
