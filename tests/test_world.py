import re

import pytest
from omegaconf import OmegaConf

from ablate import world
from ablate.data import load
from ablate.grading import is_correct
from ablate.markers import PAPER_MARKERS, count_markers
from tests.conftest import CONF

TEMPLATE = "{prompt}\nGIVEN:\n{context}\nNOW:\n"  # not the paper's: the generator must use the one passed in
HINT = {"template": TEMPLATE, "answer_template": "ANSWER {answer}", "fraction": 0.5,
        "contents": ["answer", "solution_no_thinking", "solution"]}
FAMILIES = {"in_domain": dict(steps=(2, 3), ops=("+",)), "long": dict(steps=(5, 5), ops=("+",)),
            "minus": dict(steps=(2, 3), ops=("+", "-"))}
LINE = re.compile(r"(?:(\d+)\? check (\d+)([+-])(\d) is (\d+), (ok|wait) )?(\d+)((?:[+-]\d)*)")


def _steps(question: str, solution: str) -> list[tuple]:
    """(value before, op, operand, first value, check top, check result, verdict, value after) per step."""
    body = solution.split("<think>", 1)[1].split("</think>", 1)[0]
    value, tail = re.fullmatch(r"(\d+)((?:[+-]\d)*)=\?", question).groups()
    steps = []
    for line in body.split("="):
        m = LINE.fullmatch(line)
        assert m, f"unparsed line {line!r} in {body!r}"
        first, top, cop, cx, res, verdict, after, rest = m.groups()
        op, x = tail[0], tail[1]
        assert rest == tail[2:]  # the line copies the moves not yet folded
        if top:
            assert cop == op and cx == x
        steps.append((int(value), op, int(x), int(first or after), top and int(top), res and int(res), verdict,
                      int(after)))
        value, tail = after, rest
    assert tail == ""
    return steps


def _testbed_cfg() -> dict:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_container(compose("config", ["data=world", "eval=world", "model=testbed"]), resolve=True)


def _families(n=300, seed=0, **extra):
    return {name: world.generate(n, seed=seed, name=name, **fam, **extra) for name, fam in FAMILIES.items()}


def test_solver_is_right_on_every_problem():
    for problems in _families(tentative=(0.3, 0.9), hint=HINT).values():
        for p in problems:
            question = p.prompt.split("\n", 1)[0]
            assert question.endswith("=?")
            assert eval(question[:-2]) == int(p.answer)  # independent of the solver: Python evaluates the chain
            assert is_correct(p.solution, p.answer) and p.solution.endswith(f"\\boxed{{{p.answer}}}")
            value = int(re.match(r"\d+", question).group())
            for a, op, x, first, top, res, verdict, after in _steps(question, p.solution):
                assert a == value  # each step starts from the previous step's final value
                value = value + x if op == "+" else value - x
                assert world.LO <= value <= world.HI and after == value
                if top is not None:  # the check recomputes the units digit and is itself right
                    assert top % 10 == a % 10 and res == (top + x if op == "+" else top - x) and res % 10 == value % 10
                    assert verdict == ("ok" if first == value else "wait")
                else:
                    assert first == value
            assert value == int(p.answer)


def test_markers_only_on_tentative_steps_and_more_often_on_hard_ones():
    problems = world.generate(2000, steps=(2, 3), seed=3, tentative=(0.1, 0.6), wrong=0.5)
    counts = {(hard, tentative): 0 for hard in (0, 1) for tentative in (0, 1)}
    slips = fixed = 0
    for p in problems:
        steps = _steps(p.prompt, p.solution)
        for a, op, x, first, top, _, verdict, after in steps:
            counts[world.is_hard(a, op, x), top is not None] += 1
            slips += first != after
            fixed += first != after and verdict == "wait" and after == world.apply(a, op, x)
        # Exactly one "check" per tentative step and one "wait" per slip, and no marker anywhere else.
        n_tentative, n_slips = sum(s[4] is not None for s in steps), sum(s[3] != s[7] for s in steps)
        markers = count_markers(p.solution)
        assert markers["check"] == n_tentative and markers["wait"] == n_slips
        assert sum(markers.values()) == n_tentative + n_slips
    easy_rate = counts[0, 1] / (counts[0, 0] + counts[0, 1])
    hard_rate = counts[1, 1] / (counts[1, 0] + counts[1, 1])
    assert 0.05 < easy_rate < 0.15 and 0.5 < hard_rate < 0.7
    assert slips > 100 and fixed == slips  # every slip is flagged and corrected ("wait <right value>")


def test_hinted_prompts_use_the_given_template_and_get_confident_traces():
    problems = world.generate(400, seed=1, hint=HINT, tentative=(0.5, 0.9))
    hinted = [p for p in problems if p.id.endswith("-hinted")]
    plain = {p.id: p for p in problems if not p.id.endswith("-hinted")}
    assert 120 < len(hinted) < 280 and len(plain) == 400
    seen = set()
    for h in hinted:
        p = plain[h.id.removesuffix("-hinted")]
        assert h.prompt.startswith(p.prompt + "\nGIVEN:\n") and h.prompt.endswith("\nNOW:\n")
        context = h.prompt[len(p.prompt + "\nGIVEN:\n"):-len("\nNOW:\n")]
        seen.add("answer" if context.startswith("ANSWER") else "solution" if "<think>" in context else "no_thinking")
        assert context in (f"ANSWER {p.answer}", f"\\boxed{{{p.answer}}}") or is_correct(context, p.answer)
        assert h.answer == p.answer and sum(count_markers(h.solution, PAPER_MARKERS).values()) == 0
        assert "?" not in h.solution and len(h.solution) <= len(p.solution)
        assert all(s[4] is None for s in _steps(p.prompt, h.solution))
    assert seen == {"answer", "solution", "no_thinking"}
    assert sum(sum(count_markers(p.solution).values()) for p in plain.values()) > 200  # unhinted traces do flag
    with pytest.raises(ValueError, match="'none' is not a hint"):
        world.generate(5, hint={**HINT, "contents": ["none"]})


def test_generation_is_deterministic_by_seed():
    a, b = _families(seed=5, hint=HINT), _families(seed=5, hint=HINT)
    assert a == b
    assert [p.prompt for p in a["in_domain"]] != [p.prompt for p in _families(seed=6)["in_domain"]]
    assert len({p.prompt for p in a["in_domain"]}) == len(a["in_domain"])


def test_families_and_splits_are_disjoint():
    fams = {k: {p.prompt for p in v} for k, v in _families(n=500).items()}
    assert not fams["in_domain"] & fams["long"] and not fams["in_domain"] & fams["minus"]
    assert all("-" in q for q in fams["minus"]) and all(q.count("+") == 5 for q in fams["long"])
    base = world.generate(3000, split="base", seed=0, hint={**HINT, "fraction": 1.0})
    questions = {p.prompt.split("\n", 1)[0] for p in base}
    study = {p.prompt for p in world.generate(3000, split="study", seed=0)}
    assert len(questions) == 3000 and not questions & study  # not even inside a hinted prompt
    with pytest.raises(ValueError, match="split='train'"):
        world.generate(3, split="train")
    with pytest.raises(ValueError, match=r"steps=\[10, 12\]"):
        world.generate(3, steps=(10, 12))


def test_configs_compose_and_load():
    cfg = _testbed_cfg()
    problems = load(cfg["data"]["source"], "data.source", "world")
    suites = {k: load(v, f"eval.suites.{k}", k) for k, v in cfg["eval"]["suites"].items()}
    assert len(problems) == 2000 and set(suites) == {"long", "minus"}
    prompts = {p.prompt for p in problems}
    assert not any(p.prompt in prompts for s in suites.values() for p in s)
    hint = cfg["model"]["build"]["task"][0]["hint"]
    assert hint["template"] == cfg["teacher"]["template"]  # the project's teacher prompt, not a copy


def test_testbed_build_at_reduced_size_loads_and_generates(tmp_path):
    from ablate import evaluate, models

    cfg = _testbed_cfg()
    build = {**cfg["model"]["build"], "hidden_size": 16, "intermediate_size": 32, "layers": 1, "heads": 2,
             "warmup_steps": 3, "batch_size": 4,
             "task": [{**t, "n": 10} for t in cfg["model"]["build"]["task"]]}
    corpus = models.warmup_problems(build, frozenset())
    assert any(p.prompt.startswith(p.prompt.split("\n")[0] + "\nCorrect solution:") for p in corpus)
    folder = models.build_tiny(build, str(tmp_path))
    assert models.build_tiny(build, str(tmp_path)) == folder  # cached by config hash
    model, tok = models.load(folder)
    out = evaluate.generate(model, tok, ["12+3=?"], temperature=1.0, top_p=1.0, max_new_tokens=8, batch_size=1)
    assert len(out) == 1 and 0 < out[0][1] <= 8


def _hard_share(problems) -> float:
    steps = [s for p in problems for s in _steps(p.prompt, p.solution)]
    return sum(world.is_hard(a, op, x) for a, op, x, *_ in steps) / len(steps)


def test_carry_knob_sets_the_share_of_hard_moves():
    shares = [_hard_share(world.generate(300, steps=(5, 5), seed=3, carry=c)) for c in (0.0, 0.33, 0.67, 1.0)]
    # Only one kind of move fits at some values (units digit 9: every addition carries; 0: none does), so on
    # 5-addition chains the realised share of hard moves spans about 0.28 to 0.72 (measured), rising with the knob.
    assert shares == sorted(shares) and shares[0] < 0.33 and shares[-1] > 0.67
    for p in world.generate(50, steps=(5, 5), seed=3, carry=1.0):  # the knob keeps the solver right
        assert eval(p.prompt[:-2]) == int(p.answer)
    with pytest.raises(ValueError, match="carry=1.5"):
        world.generate(3, carry=1.5)


def test_dose_grid_and_control_compose():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        dose = compose("config", ["grid=dose"], return_hydra_config=True)
        control = OmegaConf.to_container(compose("config", ["model=testbed_control"]), resolve=True)
    suites = {k: v for k, v in dose.eval.suites.items() if v is not None}
    assert sorted(v.carry for v in suites.values()) == [0.0, 0.33, 0.67, 1.0]
    assert dose.hydra.sweeper.params.objective == "grpo,sdpo" and dose.hydra.sweeper.params.coverage == "seen_512"
    # the control corpus: the same recipe with confident traces only, so not one marker
    from ablate import models

    build = {**control["model"]["build"], "task": [{**t, "n": 200} for t in control["model"]["build"]["task"]]}
    corpus = models.warmup_problems(build, frozenset())
    assert len(corpus) > 600 and sum(sum(count_markers(p.solution, PAPER_MARKERS).values()) for p in corpus) == 0
    testbed = _testbed_cfg()["model"]["build"]
    assert {k: v for k, v in build.items() if k != "task"} == {k: v for k, v in testbed.items() if k != "task"}
