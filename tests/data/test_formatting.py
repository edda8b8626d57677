from rmtrain.data.layout import (
    Encoded,
    encode_batch,
    encode_pairs,
    encode_text,
    fit_pair,
    fit_single,
    render,
)
from rmtrain.data.pairs import Pair


def test_chat_layout_for_qwen3(qwen_tokenizer):
    head, body, tail = render(qwen_tokenizer, "Hi?", "Hello!", chat=True)
    assert head == "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    assert body == "<think>\n\n</think>\n\nHello!"
    assert tail == "<|im_end|>\n"
    full = qwen_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}],
        tokenize=False,
    )
    assert head + body + tail == full


def test_plain_layout_ends_with_eos(qwen_tokenizer):
    (enc,) = encode_batch(qwen_tokenizer, ["Q"], ["A"], chat=False)
    assert enc.tail == [qwen_tokenizer.eos_token_id]
    assert qwen_tokenizer.decode(enc.prompt + enc.body) == "Q\n\nA"


def test_no_cut_when_it_fits():
    c, r = Encoded([1, 2], [3, 4], [9]), Encoded([1, 2], [5], [9])
    fitted = fit_pair([1, 2], c, r, max_length=5)
    assert (fitted.prompt, fitted.chosen, fitted.rejected, fitted.truncated) == (
        [1, 2],
        [3, 4, 9],
        [5, 9],
        False,
    )


def test_prompt_is_cut_from_the_left_first():
    prompt = list(range(10))  # 10 prompt tokens, responses need 3
    c, r = Encoded(prompt, [20, 21], [99]), Encoded(prompt, [30], [99])
    fitted = fit_pair(prompt, c, r, max_length=8, prompt_floor=2)
    assert fitted.prompt == [5, 6, 7, 8, 9]  # most recent 5 prompt tokens
    assert fitted.chosen == [20, 21, 99] and fitted.truncated


def test_then_the_response_is_cut_and_the_tail_stays():
    prompt = list(range(10))
    c, r = Encoded(prompt, list(range(20, 30)), [99]), Encoded(prompt, [30], [99])
    fitted = fit_pair(prompt, c, r, max_length=8, prompt_floor=3)
    assert fitted.prompt == [7, 8, 9]  # cut to the floor
    assert fitted.chosen == [20, 21, 22, 23, 99]  # body cut from its end, reward token kept
    assert fitted.rejected == [30, 99]
    assert len(fitted.prompt) + len(fitted.chosen) == 8


def test_pairs_identical_after_cutting_are_reported():
    prompt = [1] * 10
    c, r = Encoded(prompt, [5, 6, 7, 8], [99]), Encoded(prompt, [5, 6, 7, 9], [99])
    assert fit_pair(prompt, c, r, max_length=6, prompt_floor=2) == "identical_after_truncation"


def test_tail_that_cannot_fit_is_too_long():
    c = Encoded([], [1], [7, 8, 9])
    assert fit_pair([], c, c, max_length=3) == "too_long"


def test_fit_single_uses_the_same_rule():
    prompt = list(range(10))
    enc = Encoded(prompt, list(range(20, 30)), [99])
    ids, truncated = fit_single(enc, max_length=8, prompt_floor=3)
    assert ids == [7, 8, 9, 20, 21, 22, 23, 99] and truncated


def test_encode_pairs_counts_truncated_and_dropped(qwen_tokenizer):
    long_prompt = " ".join(["word"] * 200)
    pairs = [
        Pair("short?", "yes", "no", group="a", row=0),
        Pair(long_prompt, "answer one", "answer two", group="b", row=1),
        Pair(long_prompt, "same start " * 50 + "x", "same start " * 50 + "y", group="c", row=2),
    ]
    feats, truncated, dropped = encode_pairs(qwen_tokenizer, pairs, 64, chat=True)
    assert [f["pair_index"] for f in feats] == [0, 1]
    assert truncated == 1 and dropped == [(2, "identical_after_truncation")]
    for f in feats:
        assert len(f["prompt_ids"]) + len(f["chosen_ids"]) <= 64
        # end_of_turn: the reward is read at <|im_end|>, the template's newline left out
        assert f["chosen_ids"][-1] == qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert feats[0]["chosen_ids"][-2:] == qwen_tokenizer("yes<|im_end|>")["input_ids"][-2:]
    # template_end: the reward is read after the template's closing newline
    feats, _, _ = encode_pairs(qwen_tokenizer, pairs[:1], 64, chat=True, position="template_end")
    assert feats[0]["chosen_ids"][-2:] == qwen_tokenizer("<|im_end|>\n")["input_ids"]


class _Recording:
    """The tokenizer, recording the longest text it is asked to tokenise."""

    def __init__(self, tokenizer):
        self.tokenizer, self.longest = tokenizer, 0

    def __call__(self, text, **kw):
        texts = [text] if isinstance(text, str) else text
        self.longest = max([self.longest, *map(len, texts)])
        return self.tokenizer(text, **kw)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_long_texts_are_tokenised_only_as_far_as_the_cut_reaches(qwen_tokenizer, monkeypatch):
    """A 300k-character prompt and response give the tokens of the whole texts, from parts of
    CHARS_PER_TOKEN x (max length + SLACK) characters (a 2 MB request costs as little)."""
    import rmtrain.data.layout as layout

    words = " ".join(f"w{i % 97}rd, (x{i % 13})" for i in range(30_000))
    pairs = [
        Pair(words, words[::-1], words, group="a", row=0),
        Pair("short prompt", "-" * 300_000, "short answer", group="b", row=1),  # few tokens
    ]
    rec = _Recording(qwen_tokenizer)
    cap = layout.CHARS_PER_TOKEN * (64 + layout.SLACK)
    capped = encode_pairs(rec, pairs, 64, chat=True)
    text = qwen_tokenizer.apply_chat_template(
        [{"role": "user", "content": words}, {"role": "assistant", "content": words[::-1]}],
        tokenize=False,
    )
    one = encode_text(rec, text, chat=True, max_length=64)
    assert cap * 8 <= rec.longest < cap * 8 + 200  # "---..." (64 per token): a part 8x longer
    rec.longest = 0
    encode_pairs(rec, pairs[:1], 64, chat=True)
    assert 0 < rec.longest <= cap + 200  # the template's words around the part
    monkeypatch.setattr(layout, "CHARS_PER_TOKEN", 10**9)  # the whole texts
    whole = encode_pairs(qwen_tokenizer, pairs, 64, chat=True)
    assert capped == whole and [f["pair_index"] for f in capped[0]] == [0, 1]
    assert fit_single(one, 64) == fit_single(encode_text(qwen_tokenizer, text, chat=True), 64)
