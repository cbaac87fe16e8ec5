"""Build tiny, *real* causal language models (GPT-2, Llama, Qwen2) on disk for offline tests and examples.

Every builder writes a directory that loads back through the ordinary code path::

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)

Nothing touches a model hub. Each tokenizer is a byte-level BPE trained here with the ``tokenizers``
library, wrapped in ``PreTrainedTokenizerFast`` and saved beside the model; weights are randomly
initialised under ``torch.manual_seed(seed)`` (the caller's RNG state is left untouched), so the same
seed gives the same files.

Builders (each takes the target directory and returns it):

* :func:`build_gpt2` - ``GPT2LMHeadModel``; ``<|endoftext|>`` is bos, eos and unk, and there is **no pad
  token**, as with the real gpt2: a batch must be padded with some id and masked.  The tokenizer adds
  nothing to a text.
* :func:`build_llama` - ``LlamaForCausalLM``; ``<s>``/``</s>``/``<unk>``, pad = ``</s>``; the tokenizer
  prepends ``<s>`` to every text, as Llama's does.
* :func:`build_qwen2` - ``Qwen2ForCausalLM``; pad ``<|endoftext|>``, eos ``<|im_end|>``, no bos, and a
  ChatML chat template (the one tokenizer here with a chat template).
* :func:`train_gpt2` - a GPT-2 (2 layers, 64 wide by default) trained for a fixed number of steps on a
  text, by default :data:`SHAKESPEARE` (about 20 s on two CPU cores): a model with a meaningful
  perplexity, far below an untrained one's.

:data:`SHAKESPEARE` is ``examples/data/shakespeare.txt``: the first 200 KB of the "tinyshakespeare"
collection (karpathy/char-rnn, ``data/tinyshakespeare/input.txt``), plays by William Shakespeare,
which are in the public domain.
"""

from __future__ import annotations

import pathlib
from typing import Iterable, Sequence

from tests.model_factory import CORPUS, _prepare, _seeded

__all__ = ["SHAKESPEARE", "CHATML_TEMPLATE", "build_gpt2", "build_llama", "build_qwen2", "train_gpt2", "byte_bpe_tokenizer"]

SHAKESPEARE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "data" / "shakespeare.txt"

#: ChatML, the template Qwen2's instruct checkpoints ship (without the tool-calling branches).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: Architecture sizes: tiny enough that a build takes well under a second.
TINY = {"hidden": 64, "layers": 2, "heads": 4, "context": 128}


def byte_bpe_tokenizer(texts: Iterable[str], specials: Sequence[str], vocab_size: int = 1000, bos: str | None = None, **special_tokens):
    """A byte-level BPE trained on ``texts`` (special tokens first, ids 0, 1, ...), as a
    ``PreTrainedTokenizerFast``. With ``bos``, the tokenizer prepends it to every text (Llama's way);
    ``special_tokens`` (``eos_token=...``, ``pad_token=...``) name the roles."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = list(texts)
    tok.train_from_iterator([texts[i : i + 64] for i in range(0, len(texts), 64)], trainer=trainer, length=len(texts))
    if bos is not None:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, **special_tokens)
    assert [tokenizer.convert_tokens_to_ids(t) for t in specials] == list(range(len(specials)))
    return tokenizer


def _save(path, model, tokenizer, context: int) -> pathlib.Path:
    tokenizer.model_max_length = context
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_gpt2(path, seed: int = 0, texts: Sequence[str] = CORPUS, hidden: int = TINY["hidden"], layers: int = TINY["layers"],
               heads: int = TINY["heads"], context: int = TINY["context"], vocab_size: int = 1000) -> pathlib.Path:
    """Tiny ``GPT2LMHeadModel`` with a byte-level BPE: ``<|endoftext|>`` (id 0) is bos, eos and unk; no pad token."""
    from transformers import GPT2Config, GPT2LMHeadModel

    path = _prepare(path)
    tokenizer = byte_bpe_tokenizer(texts, ["<|endoftext|>"], vocab_size, eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    tokenizer.bos_token = "<|endoftext|>"  # named after training: the tokenizer must not prepend it
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=context, n_embd=hidden, n_layer=layers, n_head=heads,
                        bos_token_id=0, eos_token_id=0)
    with _seeded(seed):
        model = GPT2LMHeadModel(config).eval()
    return _save(path, model, tokenizer, context)


def build_llama(path, seed: int = 0, context: int = TINY["context"]) -> pathlib.Path:
    """Tiny ``LlamaForCausalLM`` (grouped-query attention, 2 key/value heads); the tokenizer prepends ``<s>``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = _prepare(path)
    tokenizer = byte_bpe_tokenizer(CORPUS, ["<unk>", "<s>", "</s>"], bos="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=TINY["hidden"], intermediate_size=2 * TINY["hidden"],
                         num_hidden_layers=TINY["layers"], num_attention_heads=TINY["heads"], num_key_value_heads=2,
                         max_position_embeddings=context, bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False)
    with _seeded(seed):
        model = LlamaForCausalLM(config).eval()
    return _save(path, model, tokenizer, context)


def build_qwen2(path, seed: int = 0, context: int = TINY["context"]) -> pathlib.Path:
    """Tiny ``Qwen2ForCausalLM``; pad ``<|endoftext|>``, eos ``<|im_end|>``, no bos, a ChatML chat template."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = _prepare(path)
    tokenizer = byte_bpe_tokenizer(CORPUS, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML_TEMPLATE
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=TINY["hidden"], intermediate_size=2 * TINY["hidden"],
                         num_hidden_layers=TINY["layers"], num_attention_heads=TINY["heads"], num_key_value_heads=2,
                         max_position_embeddings=context, bos_token_id=None, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True)
    with _seeded(seed):
        model = Qwen2ForCausalLM(config).eval()
    return _save(path, model, tokenizer, context)


def train_gpt2(path, text_path=SHAKESPEARE, steps: int = 120, seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4,
               context: int = 128, batch_size: int = 16, learning_rate: float = 3e-3) -> pathlib.Path:
    """A GPT-2 trained ``steps`` AdamW steps on random ``context``-token slices of the text at ``text_path``
    (tokenizer trained on the same text); deterministic for a seed. The defaults take about 20-40 s on two CPU cores."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    text = pathlib.Path(text_path).read_text(encoding="utf-8")
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    path = build_gpt2(path, seed=seed, texts=paragraphs, hidden=hidden, layers=layers, heads=heads, context=context, vocab_size=2000)
    model = GPT2LMHeadModel.from_pretrained(path)
    ids = torch.tensor(AutoTokenizer.from_pretrained(path)(text, verbose=False)["input_ids"])
    threads = torch.get_num_threads()
    # One thread: these steps are too small to split, and on a shared machine two threads waiting on each other
    # made a step ten times slower (2.6 s against 0.29 s at a load of 10 on two cores).
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
            model.train()
            for step in range(steps):
                starts = torch.randint(0, len(ids) - context, (batch_size,))
                batch = torch.stack([ids[s : s + context] for s in starts.tolist()])
                # Linear decay to a tenth: the small model settles instead of bouncing at the high rate.
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate * (1 - 0.9 * step / steps)
                loss = model(input_ids=batch, labels=batch).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(path)
    return path
