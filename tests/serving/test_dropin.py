"""One reward position everywhere: rmtrain's scorer, the stock sequence-classification forward,
OpenRLHF's remote client and local reading, and TRL's GRPO reward path give the training
layout's reward for the same prompt and response."""

import asyncio
import json

import httpx
import pytest
import torch

from rmtrain.serving.scorer import Item, encode_items, load_scorer, score_records
from rmtrain.serving.server import create_app
from tests.helpers import Server, live_serve

CASES = [
    ("How do I get started with bread?", "Start with flour, water, salt and a little yeast."),
    ("What is a good first houseplant?", "A pothos: it forgives missed waterings."),
    ("Name a prime number.", "Seven."),
]


@pytest.fixture(scope="module")
def scorer(trained):
    return load_scorer(str(trained[0]))


@pytest.fixture(scope="module")
def expected(scorer):
    """Training-layout rewards of CASES (prompt + response through the training encoder)."""
    recs = score_records(scorer, [{"prompt": p, "response": r} for p, r in CASES])
    return [r["reward"] for r in recs]


def generation_prompt(tok, prompt):
    msgs = [{"role": "user", "content": prompt}]
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def full_template(tok, prompt, response):
    msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return tok.apply_chat_template(msgs, tokenize=False)


def openrlhf_query(tok, prompt, response):
    """What OpenRLHF 0.11 sends: decode(prompt_ids + generated ids ending in eos)."""
    prompt_ids = tok(generation_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
    response_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return tok.decode(prompt_ids + response_ids, skip_special_tokens=False)


def test_saved_config_names_the_position_and_openrlhf_stats(trained):
    config = json.loads((trained[0] / "config.json").read_text())
    assert config["rmtrain"]["reward_position"] == "end_of_turn"
    assert config["mean"] == config["reward_mean"] and config["std"] == config["reward_std"]
    # the stock head pads with the template's trailing newline (see data.layout.residue_token)
    tok_cfg = json.loads((trained[0] / "tokenizer_config.json").read_text())
    assert tok_cfg["pad_token"] == "Ċ" and config["pad_token_id"] == 198


def test_full_texts_in_any_closing_state_score_as_trained(scorer, expected):
    tok = scorer.tokenizer
    eos = tok.eos_token
    for (prompt, response), want in zip(CASES, expected, strict=True):
        full = full_template(tok, prompt, response)
        head = generation_prompt(tok, prompt)
        texts = [
            full,  # TRL conversational, pipelines: the whole template
            full.removesuffix("\n"),  # the closing without its newline
            openrlhf_query(tok, prompt, response),  # no empty think block, ends in eos
            head + response,  # no closing at all
            head + response + eos + "\n",
        ]
        got = [r["reward"] for r in score_records(scorer, [{"text": t} for t in texts])]
        assert got == pytest.approx([want] * len(texts), abs=1e-5)
    # a text already in the training layout gets exactly the training token ids
    (pair_ids,) = encode_items(scorer, [Item(prompt=CASES[0][0], response=CASES[0][1])])
    text = tok.decode(pair_ids[0])
    assert encode_items(scorer, [Item(text=text)])[0] == pair_ids


def test_overlong_full_text_is_cut_like_training(scorer):
    prompt = "Tell me about sourdough. " * 4
    response = "It takes patience and a warm kitchen. " * 40
    text = full_template(scorer.tokenizer, prompt, response)
    as_pair = encode_items(scorer, [Item(prompt=prompt, response=response)])
    as_text = encode_items(scorer, [Item(text=text)])
    assert as_text == as_pair and as_text[0][1] is True
    ids = as_text[0][0]
    assert len(ids) == scorer.max_length
    # the prompt keeps its floor (its last max_length // 4 tokens); the response end is cut
    head = scorer.tokenizer(generation_prompt(scorer.tokenizer, prompt), add_special_tokens=False)
    floor = scorer.max_length // 4
    assert len(head["input_ids"]) > floor and ids[:floor] == head["input_ids"][-floor:]
    assert ids[-1] == scorer.tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_stock_forward_on_rendered_text_reads_the_same_token(trained, expected):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(trained[0]).eval()
    tok = AutoTokenizer.from_pretrained(trained[0])
    texts = [full_template(tok, p, r) for p, r in CASES]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        got = model(**batch).logits[:, 0].tolist()
    assert got == pytest.approx(expected, abs=1e-5)


def test_openrlhf_local_reading_at_eos_with_config_stats(trained, scorer, expected):
    """OpenRLHF's local reward model: backbone + `score` head, the value at the last attended
    position of prompt_ids + response_ids (a generation ending in eos), normalised by
    config.mean/std. The generation is the trained response as the policy writes it (after
    Qwen3's generation prompt, its empty think block is part of the generation)."""
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(trained[0])
    seq_cls = AutoModelForSequenceClassification.from_pretrained(trained[0]).eval()
    backbone = AutoModel.from_pretrained(trained[0]).eval()
    seqs = [ids for ids, _ in encode_items(scorer, [Item(prompt=p, response=r) for p, r in CASES])]
    assert all(s[-1] == tok.eos_token_id for s in seqs)
    width = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    with torch.no_grad():
        values = seq_cls.score(backbone(ids, attention_mask=mask).last_hidden_state).squeeze(-1)
    last = mask.size(1) - 1 - mask.fliplr().argmax(dim=1, keepdim=True)
    rewards = values.gather(1, last).squeeze(1)
    assert rewards.tolist() == pytest.approx(expected, abs=1e-5)
    cfg = seq_cls.config
    normalised = ((rewards - cfg.mean) / cfg.std).tolist()
    assert normalised == pytest.approx([(e - cfg.mean) / cfg.std for e in expected], abs=1e-5)


def test_empty_query_and_extra_logs(scorer, expected):
    with Server(create_app(scorer, "tiny")) as url:
        r = httpx.post(f"{url}/get_reward", json={"query": []})
        assert r.status_code == 200 and r.json()["rewards"] == []
        query = openrlhf_query(scorer.tokenizer, *CASES[0])
        body = httpx.post(f"{url}/get_reward", json={"query": [query], "labels": [None]}).json()
        assert body["rewards"] == pytest.approx(expected[:1], abs=1e-5)
        assert body["truncated"] == [False]
        assert body["extra_logs"]["rm_truncated"] == [0.0]
        assert body["extra_logs"]["rm_tokens"][0] > 0
        # the README's curl sends form-encoded content-type: still read as JSON
        raw = json.dumps({"query": [query]})
        form = {"content-type": "application/x-www-form-urlencoded"}
        assert httpx.post(f"{url}/get_reward", content=raw, headers=form).status_code == 200


@pytest.fixture(scope="module")
def live_server(trained):
    with live_serve(trained[0], "--max-items", "1024") as url:
        yield url


def test_openrlhf_remote_client(live_server, scorer, expected):
    agent = pytest.importorskip("openrlhf.utils.agent", reason="pip install --no-deps openrlhf")
    tok = scorer.tokenizer
    queries = [openrlhf_query(tok, p, r) for p, r in CASES]
    prompts = [generation_prompt(tok, p) for p, _ in CASES]
    one = agent.SingleTurnAgentExecutor(remote_rm_url=f"{live_server}/get_reward")
    for query, prompt, want in zip(queries, prompts, expected, strict=True):
        (info,) = asyncio.run(one._fetch_rewards_via_http([query], [prompt], [None]))
        assert info["rewards"] == pytest.approx([want], abs=1e-4)
        assert info["extra_logs"]["rm_truncated"] == [0.0]
    # two endpoints: the second receives {"query": []} and must answer
    two = agent.SingleTurnAgentExecutor(remote_rm_url=[f"{live_server}/get_reward"] * 2)
    first, second = asyncio.run(two._fetch_rewards_via_http(queries[:1], prompts[:1], [None]))
    assert first["rewards"] == pytest.approx(expected[:1], abs=1e-4)
    assert second["rewards"] == []


def test_batched_clients_send_whole_rollouts(live_server, scorer, expected):
    """OpenRLHF <= 0.9 posts a whole rollout batch at once: with --max-items raised it fits."""
    queries = [openrlhf_query(scorer.tokenizer, p, r) for p, r in CASES] * 300
    r = httpx.post(f"{live_server}/get_reward", json={"query": queries}, timeout=120)
    assert r.status_code == 200
    assert r.json()["rewards"] == pytest.approx(expected * 300, abs=1e-4)


def test_trl_grpo_reward_path(trained, expected, tmp_path):
    trl = pytest.importorskip("trl", reason="pip install trl (the clients extra)")
    from datasets import Dataset
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(trained[0])
    policy_dir = tmp_path / "policy"
    config = Qwen3Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16,
    )  # fmt: skip
    Qwen3ForCausalLM(config).save_pretrained(policy_dir)
    tok.save_pretrained(policy_dir)
    prompts = [[{"role": "user", "content": p}] for p, _ in CASES]
    completions = [[{"role": "assistant", "content": r}] for _, r in CASES]
    args = trl.GRPOConfig(
        output_dir=str(tmp_path / "grpo"), bf16=False, use_cpu=True, report_to=[],
        per_device_train_batch_size=3, num_generations=3, max_completion_length=8,
    )  # fmt: skip
    trainer = trl.GRPOTrainer(
        model=str(policy_dir),
        reward_funcs=str(trained[0]),
        args=args,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
    )
    inputs = [{"prompt": p} for p in prompts]
    ids = [tok(r)["input_ids"] for _, r in CASES]
    rewards = trainer._calculate_rewards(inputs, prompts, completions, ids)
    assert rewards[:, 0].tolist() == pytest.approx(expected, abs=1e-4)


def test_info_names_the_model_not_its_path(live_server, trained):
    info = httpx.get(f"{live_server}/info").text
    assert json.loads(info)["model"] == trained[0].name and str(trained[0].parent) not in info


def test_transformers_pipeline_on_chat_templated_text(trained, expected):
    from transformers import AutoTokenizer, pipeline

    tok = AutoTokenizer.from_pretrained(trained[0])
    pipe = pipeline("text-classification", model=str(trained[0]), function_to_apply="none")
    texts = [full_template(tok, p, r) for p, r in CASES]
    got = [out["score"] for out in pipe(texts)]
    assert got == pytest.approx(expected, abs=1e-5)
