"""Epistemic-marker counting ("wait", "maybe", "let me check", ...), as in the paper."""

import re
from collections.abc import Sequence

# The paper's list (arXiv 2603.24472); the lexicon used by a run is config (eval.markers.words).
PAPER_MARKERS = ("wait", "hmm", "perhaps", "maybe", "actually", "alternatively", "seems", "might", "likely", "check")


def count_markers(text: str, words: Sequence[str] = PAPER_MARKERS, mode: str = "substring") -> dict[str, int]:
    """Count each marker in `text`, case-insensitively.

    mode="substring" is the paper's `text.lower().count(w)`: "checking" counts as "check" and "unlikely"
    as "likely". mode="word" counts whole words only.
    """
    lowered = text.lower()
    if mode == "substring":
        return {w: lowered.count(w.lower()) for w in words}
    if mode == "word":
        return {w: len(re.findall(rf"\b{re.escape(w.lower())}\b", lowered)) for w in words}
    raise ValueError(f"eval.markers.mode={mode!r}: choose 'substring' (the paper's) or 'word'")
