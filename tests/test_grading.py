import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ablate import grading
from ablate.grading import exact_match, is_correct, last_boxed, reward
from tests.conftest import SHARED_DATA


def test_last_boxed_handles_nesting():
    assert last_boxed(r"first \boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert last_boxed("no answer") is None


def test_math_verify_equivalence_and_exact_match():
    assert is_correct(r"so \boxed{0.5}", r"\frac{1}{2}")
    assert not exact_match(r"so \boxed{0.5}", r"\frac{1}{2}")
    assert is_correct(r"\boxed{68}", "68") and exact_match(r"\boxed{ 68 }", "68")
    assert not is_correct(r"\boxed{69}", "68")


def test_answer_must_be_boxed_and_after_thinking():
    assert not is_correct("the answer is 68", "68")
    assert not is_correct(r"<think>\boxed{68}</think> \boxed{12}", "68")
    assert is_correct(r"<think>maybe \boxed{12}</think> \boxed{68}", "68")


def test_reward_reads_chat_completions():
    comps = [[{"role": "assistant", "content": r"\boxed{4}"}], [{"role": "assistant", "content": r"\boxed{5}"}]]
    assert reward(comps, answer=["4", "4"]) == [1.0, 0.0]


# Gold answers with currency, units and text, as MATH500 writes them: math-verify reads the gold as a boxed
# answer, so they are normalised as a response's would be. (gold, accepted responses, rejected responses)
GOLDS = [
    (r"\$36", [r"\boxed{36}", r"\boxed{36.00}", r"\boxed{\$36.00}", r"\boxed{\$36}", r"\boxed{$36$}"], [r"\boxed{37}"]),
    (r"\$18.90", [r"\boxed{18.9}", r"\boxed{\$18.90}"], [r"\boxed{19}"]),
    (r"\$32,\!348", [r"\boxed{32348}", r"\boxed{32,348}", r"\boxed{\$32,348}"], [r"\boxed{32349}"]),
    (r"5.4 \text{ cents}", [r"\boxed{5.4}", r"\boxed{5.4\text{ cents}}"], [r"\boxed{5.5}"]),
    (r"864 \mbox{ inches}^2", [r"\boxed{864}", r"\boxed{864 \text{ inches}^2}"], [r"\boxed{865}"]),
    (r"\frac{270}7\text{ degrees}", [r"\boxed{\frac{270}{7}}", r"\boxed{270/7}"], [r"\boxed{38}"]),
    (r"\text{Evelyn}", [r"\boxed{Evelyn}", r"\boxed{\text{Evelyn}}"], [r"\boxed{Navin}"]),
    (r"\text{(C)}", [r"\boxed{C}", r"\boxed{(C)}", r"\boxed{\text{(C)}}"], [r"\boxed{D}"]),
    ("$5$", [r"\boxed{5}"], [r"\boxed{6}"]),
    (r"\boxed{7}", [r"\boxed{7}"], [r"\boxed{8}"]),
]


@pytest.mark.parametrize("gold, right, wrong", GOLDS, ids=[g for g, _, _ in GOLDS])
def test_gold_with_currency_units_and_text(gold, right, wrong):
    assert all(is_correct(r, gold) for r in right), [r for r in right if not is_correct(r, gold)]
    assert not any(is_correct(w, gold) for w in wrong)


MATH500 = SHARED_DATA / "verl-math" / "evaluation" / "math500.parquet"


@pytest.mark.skipif(not MATH500.is_file(), reason="the paper's MATH500 file is not in shared/data")
def test_every_math500_gold_grades_itself_also_from_threads():
    import pandas as pd

    golds = [json.loads(r)["ground_truth"] for r in pd.read_parquet(MATH500).reward_model]
    assert {r"\$36", r"\$18.90", r"\$32,\!348"} <= set(golds)
    assert [g for g in golds if not is_correct(f"so the answer is \\boxed{{{g}}}", g)] == []
    with ThreadPoolExecutor(4) as pool:  # reward functions and evaluation may grade off the main thread
        assert all(pool.map(lambda g: is_correct(f"\\boxed{{{g}}}", g), golds))
    assert not any(is_correct(r"\boxed{36.01}", g) for g in golds if "36" in g)


def test_grading_from_a_worker_thread_matches_the_main_thread():
    cases = [(r"\boxed{\$36.00}", r"\$36"), (r"\boxed{0.5}", r"\frac{1}{2}"), (r"\boxed{69}", "68"), ("no box", "1")]
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lambda c: is_correct(*c), cases)) == [is_correct(*c) for c in cases] == \
            [True, True, False, False]
        assert pool.submit(reward, [r"\boxed{4}", r"\boxed{5}"], answer=["4", "4"]).result() == [1.0, 0.0]


# Responses that take math-verify long (sympy expanding a 30th power), or that sympy would compute in one C
# call no timeout can stop (power towers, factorials of huge numbers), or that are malformed: graded wrong,
# in bounded time, from any thread; never an exception.
PATHOLOGICAL = [r"\boxed{(x+y+z+1)^{30}}", r"\boxed{10^{10^{10}}}", r"\boxed{9!!!!!!}", r"\boxed{(10^{10})!}",
                r"\boxed{\sqrt{2}^{10^{9}}}", r"\boxed{\frac{1}{0}}", r"\boxed{}{", r"\boxed{\boxed{",
                r"\boxed{\left(}", r"\boxed{" + "(" * 500 + "}", r"\boxed{" + "1+" * 2000 + "1}", "\x00\\boxed{\udcff}"]


@pytest.mark.parametrize("thread", [False, True], ids=["main thread", "worker thread"])
def test_slow_or_malformed_answers_are_wrong_in_bounded_time(thread, monkeypatch):
    monkeypatch.setattr(grading, "SECONDS", 1.0)
    for response in PATHOLOGICAL:
        start = time.perf_counter()
        if thread:
            with ThreadPoolExecutor(1) as pool:
                result = pool.submit(is_correct, response, "7").result(timeout=60)
        else:
            result = is_correct(response, "7")
        assert result is False, response
        assert time.perf_counter() - start < 10, response  # the limit is 1 s; a loaded machine is slow to return
    assert is_correct(r"\boxed{10^{10^{10}}}", "10^{10^{10}}")  # too large to compute: compared as strings


def test_a_grader_past_its_deadline_is_interrupted(monkeypatch):
    def forever(*_, **__):
        while True:
            pass

    monkeypatch.setattr(grading, "SECONDS", 0.5)
    monkeypatch.setattr(grading, "verify", forever)
    start = time.perf_counter()
    assert is_correct(r"\boxed{1}", "1") is False
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(is_correct, r"\boxed{1}", "1").result(timeout=60) is False
    assert time.perf_counter() - start < 20
    time.sleep(1)  # no late interruption lands on the caller afterwards
    assert is_correct("no box", "1") is False
