from ablate.grading import exact_match, is_correct, last_boxed, reward


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
