"""Quick checks that the tiny locally-built models load and run through the normal HF code path."""

from __future__ import annotations

import hashlib
import warnings

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

try:  # works whether or not tests/ becomes a package
    from tests import model_factory as mf
except ImportError:  # pragma: no cover
    import model_factory as mf

TEXTS = [
    "The film was wonderful and the actors were brilliant.",
    "Das Essen in diesem Restaurant war ausgezeichnet!",
]

LONG_CONTEXT = " ".join(mf.ENGLISH_SENTENCES[16:40])  # encyclopedic facts, > 128 tokens


# ---------------------------------------------------------------- fixtures (built once per module)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="module")
def bert_cls_dir(root):
    return mf.build_bert_classifier(root / "bert-cls")


@pytest.fixture(scope="module")
def bert_qa_dir(root):
    return mf.build_bert_qa(root / "bert-qa")


@pytest.fixture(scope="module")
def encoder_dir(root):
    return mf.build_sentence_encoder(root / "encoder")


@pytest.fixture(scope="module")
def t5_dir(root):
    return mf.build_t5(root / "t5")


@pytest.fixture(scope="module")
def bart_dir(root):
    return mf.build_bart(root / "bart")


@pytest.fixture(scope="module")
def marian_dir(root):
    pytest.importorskip("sentencepiece")
    return mf.build_marian(root / "marian")


def _load_tokenizer(path):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*sacremoses.*")
        return AutoTokenizer.from_pretrained(path)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- common properties

ALL = ["bert_cls_dir", "bert_qa_dir", "encoder_dir", "t5_dir", "bart_dir", "marian_dir"]
FAST = ["bert_cls_dir", "bert_qa_dir", "encoder_dir", "t5_dir", "bart_dir"]
SEQ2SEQ = ["t5_dir", "bart_dir", "marian_dir"]


@pytest.mark.parametrize("fixture", ALL)
def test_saved_as_safetensors_and_loadable(fixture, request):
    path = request.getfixturevalue(fixture)
    assert (path / "model.safetensors").is_file()
    assert not (path / "pytorch_model.bin").exists()
    config = AutoConfig.from_pretrained(path)
    tok = _load_tokenizer(path)
    assert config.vocab_size >= len(tok) > 100
    ids = tok(TEXTS[0])["input_ids"]
    assert tok.unk_token_id not in ids  # the corpus gave it a real vocabulary


@pytest.mark.parametrize("fixture", FAST)
def test_fast_tokenizer_offsets(fixture, request):
    tok = _load_tokenizer(request.getfixturevalue(fixture))
    assert tok.is_fast
    text = TEXTS[0]
    enc = tok(text, return_offsets_mapping=True)
    assert len(enc["offset_mapping"]) == len(enc["input_ids"])
    special = set(tok.all_special_ids)
    spans = [(s, e) for (s, e), i in zip(enc["offset_mapping"], enc["input_ids"]) if i not in special]
    assert all(0 <= s <= e <= len(text) for s, e in spans)
    assert [s for s, _ in spans] == sorted(s for s, _ in spans)
    # every non-space character is covered by some token's span (a lone Metaspace "▁" token may
    # overlap the next one, as with real T5 tokenizers, so coverage rather than exact tiling)
    covered = {k for s, e in spans for k in range(s, e)}
    assert all(k in covered for k, ch in enumerate(text) if not ch.isspace())
    assert tok.decode(enc["input_ids"], skip_special_tokens=True).lower() == text.lower()


# ---------------------------------------------------------------- encoders


def test_bert_classifier(bert_cls_dir):
    tok = _load_tokenizer(bert_cls_dir)
    model = AutoModelForSequenceClassification.from_pretrained(bert_cls_dir).eval()
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.label2id == {"negative": 0, "positive": 1}
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.max_position_embeddings) == (32, 2, 512)
    assert 800 <= len(tok) <= 1000
    assert tok.model_max_length == 512
    with torch.no_grad():
        out = model(**tok(TEXTS, padding=True, return_tensors="pt"))
    assert out.logits.shape == (2, 2)


def test_bert_classifier_custom_labels(tmp_path):
    path = mf.build_bert_classifier(tmp_path / "m", labels=("sports", "politics", "science"))
    model = AutoModelForSequenceClassification.from_pretrained(path)
    assert model.config.id2label == {0: "sports", 1: "politics", 2: "science"}
    tok = _load_tokenizer(path)
    with torch.no_grad():
        assert model(**tok(TEXTS, padding=True, return_tensors="pt")).logits.shape == (2, 3)


def test_bert_qa_needs_several_windows(bert_qa_dir):
    tok = _load_tokenizer(bert_qa_dir)
    model = AutoModelForQuestionAnswering.from_pretrained(bert_qa_dir).eval()
    assert type(model).__name__ == "BertForQuestionAnswering"
    assert tok.model_max_length == 128 and model.config.max_position_embeddings == 512
    enc = tok(
        "When was the Eiffel Tower completed?",
        LONG_CONTEXT,
        truncation="only_second",
        max_length=tok.model_max_length,
        stride=32,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
        return_tensors="pt",
    )
    assert enc["input_ids"].shape[0] >= 2 and enc["input_ids"].shape[1] == 128
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], token_type_ids=enc["token_type_ids"])
    assert out.start_logits.shape == out.end_logits.shape == enc["input_ids"].shape


def test_sentence_encoder_mean_pooling(encoder_dir):
    tok = _load_tokenizer(encoder_dir)
    model = AutoModel.from_pretrained(encoder_dir).eval()
    assert type(model).__name__ == "BertModel"
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    hidden = out.last_hidden_state
    assert hidden.shape == (*batch["input_ids"].shape, 32)
    assert out.pooler_output.shape == (2, 32)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = (hidden * mask).sum(1) / mask.sum(1)
    assert emb.shape == (2, 32) and torch.isfinite(emb).all()


def test_sentence_encoder_loads_in_sentence_transformers(encoder_dir):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(encoder_dir), device="cpu")
    emb = model.encode(TEXTS, convert_to_tensor=True)
    assert emb.shape == (2, 32)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-4)


# ---------------------------------------------------------------- seq2seq


@pytest.mark.parametrize("fixture", SEQ2SEQ)
def test_seq2seq_forward_and_generate(fixture, request):
    path = request.getfixturevalue(fixture)
    tok = _load_tokenizer(path)
    model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    gc = model.generation_config
    assert gc.max_new_tokens == mf.MAX_NEW_TOKENS and not gc.min_length and not gc.min_new_tokens
    assert gc.decoder_start_token_id == model.config.decoder_start_token_id is not None
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    labels = tok(text_target=["Hallo Welt.", "A short target."], padding=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(**batch, labels=labels)
        assert out.logits.shape == (2, labels.shape[1], model.config.vocab_size)
        assert torch.isfinite(out.loss)
        gen = model.generate(**batch, num_beams=1)
        short = model.generate(**batch, num_beams=1, max_new_tokens=3)
    # first position is the decoder start token
    assert gen[0, 0].item() == model.config.decoder_start_token_id
    assert 1 <= gen.shape[1] - 1 <= mf.MAX_NEW_TOKENS
    assert short.shape[1] - 1 <= 3
    texts = tok.batch_decode(gen, skip_special_tokens=True)
    assert len(texts) == 2 and all(t.strip() for t in texts)


def test_t5_tokenizer_layout(t5_dir):
    tok = _load_tokenizer(t5_dir)
    assert type(tok).__name__ == "T5Tokenizer" and tok.is_fast
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok("hello world")["input_ids"][-1] == 1  # </s> appended
    assert "<extra_id_0>" in tok.get_vocab()
    assert tok.backend_tokenizer.model.__class__.__name__ == "Unigram"
    cfg = AutoConfig.from_pretrained(t5_dir)
    assert (cfg.d_model, cfg.d_ff, cfg.num_layers, cfg.num_heads, cfg.d_kv) == (32, 64, 2, 2, 16)


def test_bart_tokenizer_layout(bart_dir):
    tok = _load_tokenizer(bart_dir)
    assert tok.is_fast
    ids = [tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.mask_token_id]
    assert ids == [0, 1, 2, 3, 4]
    enc = tok("héllo wörld ☃")["input_ids"]
    assert enc[0] == 0 and enc[-1] == 2
    assert tok.decode(enc, skip_special_tokens=True) == "héllo wörld ☃"  # byte-level: lossless
    gen = AutoModelForSeq2SeqLM.from_pretrained(bart_dir).generate(**tok(TEXTS[:1], return_tensors="pt"))
    assert gen[0, :2].tolist() == [2, 0]  # decoder start </s>, then forced <s>


def test_marian_tokenizer_layout(marian_dir):
    tok = _load_tokenizer(marian_dir)
    assert type(tok).__name__ == "MarianTokenizer"
    assert tok.eos_token_id == 0 and tok.pad_token_id == len(tok) - 1
    for name in ("source.spm", "target.spm", "vocab.json"):
        assert (marian_dir / name).is_file()
    assert AutoConfig.from_pretrained(marian_dir).decoder_start_token_id == tok.pad_token_id


# ---------------------------------------------------------------- determinism


@pytest.mark.parametrize("builder", ["build_bert_classifier", "build_t5", "build_bart", "build_marian"])
def test_deterministic(builder, tmp_path):
    if builder == "build_marian":
        pytest.importorskip("sentencepiece")
    build = getattr(mf, builder)
    state = torch.random.get_rng_state()
    a, b, c = build(tmp_path / "a"), build(tmp_path / "b"), build(tmp_path / "c", seed=1)
    assert torch.equal(state, torch.random.get_rng_state())  # caller's RNG untouched
    assert _sha(a / "model.safetensors") == _sha(b / "model.safetensors") != _sha(c / "model.safetensors")
    tok_file = "source.spm" if builder == "build_marian" else "tokenizer.json"
    assert _sha(a / tok_file) == _sha(b / tok_file) == _sha(c / tok_file)
    assert (a / "config.json").read_text() == (c / "config.json").read_text()


def test_marian_missing_sentencepiece_raises_importerror(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # makes `import sentencepiece` fail
    with pytest.raises(ImportError, match="sentencepiece"):
        mf.build_marian(tmp_path / "m")
