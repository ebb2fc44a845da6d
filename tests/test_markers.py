from ablate.markers import PAPER_MARKERS, count_markers


def test_paper_list():
    assert PAPER_MARKERS == ("wait", "hmm", "perhaps", "maybe", "actually", "alternatively", "seems", "might",
                             "likely", "check")


def test_substring_semantics_hand_counted():
    text = "Wait, hmm... maybe I should double-check. Checking again: it seems unlikely. WAIT."
    counts = count_markers(text)
    # wait: "Wait", "WAIT"; check: "double-check", "Checking"; likely: "unlikely" (the paper's substring rule)
    assert counts == {"wait": 2, "hmm": 1, "perhaps": 0, "maybe": 1, "actually": 0, "alternatively": 0,
                      "seems": 1, "might": 0, "likely": 1, "check": 2}


def test_word_mode_skips_the_substring_traps():
    text = "Wait, hmm... maybe I should double-check. Checking again: it seems unlikely. WAIT."
    counts = count_markers(text, mode="word")
    assert counts["check"] == 1  # "double-check" splits on the hyphen; "Checking" is not "check"
    assert counts["likely"] == 0  # "unlikely" is not "likely"
    assert counts["wait"] == 2


def test_custom_lexicon_and_empty_text():
    assert count_markers("Let me verify. Verify!", words=["verify"]) == {"verify": 2}
    assert sum(count_markers("").values()) == 0
