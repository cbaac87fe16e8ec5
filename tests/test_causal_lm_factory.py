"""The tiny causal LMs load through the Auto classes, are deterministic, and carry the special tokens their real counterparts do."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests import causal_lm_factory as factory

TEXT = "The teacher visited the red castle near the river."


def _weights_digest(path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2"])
def test_builds_load_run_and_repeat(tmp_path, name):
    build = getattr(factory, f"build_{name}")
    path = build(tmp_path / "a")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))
    ids = tokenizer(TEXT)["input_ids"]
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), model.config.vocab_size)
    assert tokenizer.decode(ids, skip_special_tokens=True) == TEXT
    assert _weights_digest(build(tmp_path / "b")) == _weights_digest(path)


def test_special_tokens_as_the_real_models_have_them(gpt2_lm, llama_lm, qwen2_lm):
    gpt2 = AutoTokenizer.from_pretrained(gpt2_lm)
    assert gpt2.pad_token_id is None and gpt2.bos_token_id == gpt2.eos_token_id == 0
    assert gpt2(TEXT)["input_ids"][0] != gpt2.bos_token_id  # gpt2's tokenizer adds nothing
    llama = AutoTokenizer.from_pretrained(llama_lm)
    assert llama(TEXT)["input_ids"][0] == llama.bos_token_id == 1 and llama.pad_token_id == 2
    qwen = AutoTokenizer.from_pretrained(qwen2_lm)
    assert qwen.bos_token_id is None and qwen.pad_token_id == 0 and qwen.eos_token == "<|im_end|>"
    prompt = qwen.apply_chat_template([{"role": "user", "content": "Hello"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"


def _mean_loss(path, text: str) -> float:
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.tensor([tokenizer(text)["input_ids"][:64]])
    with torch.inference_mode():
        return float(model(input_ids=ids, labels=ids).loss)


def test_training_lowers_the_loss_on_unseen_text(tmp_path, trained_gpt2_lm):
    untrained = factory.build_gpt2(tmp_path / "untrained", texts=factory.SHAKESPEARE.read_text().split("\n\n"), vocab_size=2000,
                                   context=64)
    heldout = "First Citizen:\nWe are accounted poor citizens, the patricians good.\n\nAll:\nSpeak, speak."
    assert AutoTokenizer.from_pretrained(untrained).vocab == AutoTokenizer.from_pretrained(trained_gpt2_lm).vocab
    assert _mean_loss(trained_gpt2_lm, heldout) < _mean_loss(untrained, heldout) - math.log(2)
