"""Training-time augmentations: exact rewrites on hand-made pairs, seeded counts, training pairs
only, and the source pair's prompt shared in the prefix tree."""

from __future__ import annotations

import random

import pytest

from rmtrain.data.augment import AUGMENTATIONS, augment_pairs, augmentation_names
from rmtrain.data.pairs import Pair
from rmtrain.errors import RmtrainError
from rmtrain.evaluation.probes import FILLERS, OPENERS

ANSWER = "Boil the water first. Then add the pasta and stir. Drain it after ten minutes."
PAIR = Pair("How do I cook pasta?", ANSWER, "Just eat it raw.", "g1", 0)
OTHER = Pair("Best tea?", "Green tea, brewed cool.", "Coffee.", "g2", 1)


class Scripted(random.Random):
    """An RNG whose draws are given: the rewrites can be worked out by hand."""

    def __init__(self, floats=(), ints=(), picks=()) -> None:
        super().__init__(0)
        self.floats, self.ints, self.picks = list(floats), list(ints), list(picks)

    def random(self) -> float:
        return self.floats.pop(0)

    def randint(self, a: int, b: int) -> int:
        value = self.ints.pop(0)
        assert a <= value <= b
        return value

    def randrange(self, *args: int) -> int:
        return self.ints.pop(0)

    def choice(self, seq):
        return seq[self.picks.pop(0)] if self.picks else seq[0]


def rewrite(name, pair=PAIR, pool=(PAIR, OTHER), **script):
    return AUGMENTATIONS[name].rewrite(pair, list(pool), Scripted(**script))


def test_relevance_makes_another_prompts_answer_lose():
    # choice picks OTHER (index 1 of the pool); random 0.7 >= 0.5 takes its rejected answer
    (new,) = rewrite("relevance", picks=[1], floats=[0.7])
    assert (new.prompt, new.chosen, new.rejected) == (PAIR.prompt, ANSWER, "Coffee.")
    assert (new.group, new.extra) == ("g1", {"augment": "relevance"})
    (chosen_of_other,) = rewrite("relevance", picks=[1], floats=[0.2])
    assert chosen_of_other.rejected == "Green tea, brewed cool."
    assert rewrite("relevance", pool=[PAIR], picks=[0] * 8) == []  # only its own prompt


def test_truncation_cuts_the_answer_at_a_word_end():
    # 15 words; the cut is after word k + 1 for k drawn in [15 // 5, 3 * 15 // 5] = [3, 9]
    (new,) = rewrite("truncation", ints=[3])
    assert new.chosen == ANSWER and new.rejected == "Boil the water first."
    (later,) = rewrite("truncation", ints=[8])  # mid-sentence
    assert later.rejected == "Boil the water first. Then add the pasta and"
    short = Pair("q", "Too short to cut.", "no", "g3", 2)
    assert rewrite("truncation", pair=short) == []


def test_filler_inserts_repetition_or_content_free_text_after_an_early_sentence():
    # ANSWER has 3 sentences: the places are after the 1st, after the 2nd, or the end.
    # pick 1: after "stir."; random 0.3 < 0.5: repeat the sentences said so far, from index 1
    # (randrange), randint 2 of them (one is left), joined by "\n\n" (pick 2)
    (new,) = rewrite("filler", floats=[0.3], ints=[1, 2], picks=[1, 2])
    assert new.rejected == (
        "Boil the water first. Then add the pasta and stir.\n\nThen add the pasta and stir."
        " Drain it after ten minutes."
    )
    # pick 2: at the end; random 0.9: generic text, lead 0, subject 1, verb 2, object 3;
    # 0.1 < 0.4: one sentence; separator pick 0 (a space)
    (generic,) = rewrite("filler", floats=[0.9, 0.1], picks=[2, 0, 1, 2, 3, 0])
    assert generic.rejected == (
        ANSWER + " Overall, the point above is shaped by the situation at hand."
    )
    # a long answer: never later than after its third sentence, so a right cut keeps it
    long = Pair("q", " ".join(f"Step {i} is done." for i in range(40)), "no", "g4", 3)
    rng = random.Random(0)
    for _ in range(50):
        (padded,) = AUGMENTATIONS["filler"].rewrite(long, [long], rng)
        assert padded.rejected.endswith(long.chosen.split("Step 3 is done.")[1])


def test_whitespace_and_layout_are_ties_in_both_orders():
    a, b = rewrite("whitespace", picks=[2, 1])  # lead "\n", trail "\n" (the tail list's 2nd)
    assert (a.chosen, a.rejected) == (ANSWER, "\n" + ANSWER + "\n")
    assert (b.chosen, b.rejected) == (a.rejected, a.chosen)
    c, d = rewrite("layout", ints=[0])
    numbered = (
        "1. Boil the water first.\n2. Then add the pasta and stir.\n3. Drain it after ten minutes."
    )
    assert (c.rejected, d.chosen) == (numbered, numbered)
    c, _ = rewrite("layout", ints=[3])
    assert c.rejected == (
        "### Boil the water first.\nThen add the pasta and stir. Drain it after ten minutes."
    )


def test_own_wordings_share_nothing_with_the_probes():
    import inspect

    from rmtrain.data import augment

    source = inspect.getsource(augment)
    for text in (*FILLERS, *OPENERS, "**Answer**"):
        assert text not in source
    rng = random.Random(0)
    generated = [augment.generic_text(rng) for _ in range(200)]
    assert not any(f in g or g in f for g in generated for f in FILLERS)


def test_seeded_counts_and_names():
    pool = [Pair(f"q{i}", ANSWER, f"bad {i}", f"g{i}", i) for i in range(40)]
    added, counts = augment_pairs(pool, ["relevance", "whitespace"], 0.5, seed=7)
    again, same = augment_pairs(pool, ["relevance", "whitespace"], 0.5, seed=7)
    assert added == again and counts == same
    assert sum(counts.values()) == len(added) and counts["whitespace"] % 2 == 0
    assert 8 <= counts["relevance"] <= 32  # about half of 40
    assert augment_pairs(pool, ["relevance"], 0.0, seed=7) == ([], {})
    assert len(augment_pairs(pool, ["relevance"], 1.0, seed=7)[0]) == 40
    assert augmentation_names("all") == list(AUGMENTATIONS)
    with pytest.raises(RmtrainError, match="unknown --augment"):
        augmentation_names("relevance,nope")


def test_augmented_pairs_train_only_and_share_the_prompt(tmp_path, qwen_tokenizer):
    from rmtrain.batching.collate import make_collator
    from rmtrain.config import build_config
    from rmtrain.training.data_setup import prepare_data
    from tests.helpers import write_demo

    data = write_demo(tmp_path / "d.jsonl", 60, seed=2)
    base = {"model": "builtin:tiny-qwen3", "dataset": [str(data)], "max_length": 128}
    plain = prepare_data(build_config(base), qwen_tokenizer)
    aug = prepare_data(
        build_config({**base, "augment": "all", "augment_rate": 0.5}), qwen_tokenizer
    )
    assert [f["chosen_ids"] for f in aug.test] == [f["chosen_ids"] for f in plain.test]
    assert aug.test_pairs == plain.test_pairs  # nothing added reaches the held-out split
    added = aug.counts.augmented
    assert len(aug.train) == len(plain.train) + sum(added.values())
    assert aug.counts.to_dict()["augmented_total"] == sum(added.values()) > 0
    assert aug.counts.train_pairs == plain.counts.train_pairs  # rows are counted once
    # an added pair has its source pair's prompt ids; in one batch the tree computes them once
    source = aug.train[0]
    mine = [f for f in aug.train[len(plain.train) :] if f["prompt_ids"] == source["prompt_ids"]]
    assert mine
    trees = make_collator("prefix_sharing", 0, 0, tree_cap=1000)
    together = int(trees([source, mine[0]])["num_tokens"])
    apart = int(trees([source])["num_tokens"]) + int(trees([mine[0]])["num_tokens"])
    assert apart - together >= len(source["prompt_ids"])
