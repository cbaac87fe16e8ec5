"""Build tiny, *real* Hugging Face models on disk for offline tests.

Every builder writes a directory that loads back through the ordinary code path::

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForXxx.from_pretrained(path)

No model hub is touched: the tokenizers are trained here with the ``tokenizers``
library (or ``sentencepiece`` for Marian) on :data:`CORPUS`, a built-in corpus of
a few hundred English and German sentences, and the weights are randomly
initialised under ``torch.manual_seed(seed)`` and saved as safetensors.  The
same ``seed`` gives byte-identical weights and tokenizer files.  The global
torch RNG state is left untouched (``torch.random.fork_rng``).

Builders (each takes the target directory and returns it, creating it if needed):

* :func:`build_bert_classifier` - ``BertForSequenceClassification`` + WordPiece.
* :func:`build_bert_qa` - ``BertForQuestionAnswering`` + WordPiece, model_max_length 128.
* :func:`build_sentence_encoder` - ``BertModel`` (no task head) laid out like
  ``sentence-transformers/all-MiniLM-*`` (modules.json + 1_Pooling/ mean pooling).
* :func:`build_t5` - ``T5ForConditionalGeneration`` + Unigram ``T5Tokenizer``.
* :func:`build_bart` - ``BartForConditionalGeneration`` + byte-level BPE.
* :func:`build_marian` - ``MarianMTModel`` + ``MarianTokenizer`` (needs the
  ``sentencepiece`` package; raises :class:`ImportError` without it).

The models are untrained, so their predictions are arbitrary (but deterministic).
Seq2seq models carry a ``generation_config.json`` with ``max_new_tokens=20``
(:data:`MAX_NEW_TOKENS`), greedy search, and no minimum length, so ``generate()``
always terminates.  Their ``bad_words_ids`` ban the special tokens other than EOS
(pad/unk/bos/mask/sentinels; opus-mt likewise bans ``<pad>``) so that the random
weights still decode to non-empty text with ``skip_special_tokens=True``.

The first build in a process takes ~2 s on 2 CPU cores (transformers' lazy imports);
later builds ~0.05 s each (~0.1 s for Marian).  Still, suite-wide reuse is cheap to arrange with a session-scoped fixture in
``conftest.py``, for example::

    import pytest
    from tests import model_factory as mf

    @pytest.fixture(scope="session")
    def tiny_models(tmp_path_factory):
        root = tmp_path_factory.mktemp("tiny-models")
        cache = {}

        def get(name, **kwargs):
            key = (name, tuple(sorted(kwargs.items())))
            if key not in cache:
                builder = getattr(mf, f"build_{name}")
                cache[key] = builder(root / f"{name}-{len(cache)}", **kwargs)
            return cache[key]

        return get      # usage: path = tiny_models("bert_classifier")

(Or one fixture per model, e.g. ``bert_classifier_dir = build_bert_classifier(
tmp_path_factory.mktemp("bert-cls"))``.)  Marian fixtures should do
``pytest.importorskip("sentencepiece")`` first, or catch :class:`ImportError`
and ``pytest.skip``.
"""

from __future__ import annotations

import contextlib
import io
import json
import pathlib
import random
from typing import Iterator, Sequence

__all__ = [
    "CORPUS",
    "GERMAN_SENTENCES",
    "ENGLISH_SENTENCES",
    "PARALLEL_EN_DE",
    "MAX_NEW_TOKENS",
    "build_bert_classifier",
    "build_bert_qa",
    "build_sentence_encoder",
    "build_t5",
    "build_bart",
    "build_marian",
]

#: Default ``generation_config.max_new_tokens`` of the seq2seq builders.
MAX_NEW_TOKENS = 20

# ---------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------

ENGLISH_SENTENCES: tuple[str, ...] = (
    # sentiment-flavoured reviews
    "This movie was absolutely wonderful and the actors were brilliant.",
    "I loved the soundtrack, the pacing and the beautiful photography.",
    "What a fantastic experience, I would happily watch it again.",
    "The restaurant served delicious food and the staff were friendly.",
    "Great value for money, the battery lasts for two whole days.",
    "An excellent book with clever characters and a satisfying ending.",
    "The hotel room was clean, quiet and very comfortable.",
    "Honestly the best concert I have been to in years!",
    "The film was boring, far too long and badly acted.",
    "I hated the ending; it made no sense at all.",
    "Terrible service, cold food and a rude waiter.",
    "The product broke after three days and support never answered.",
    "A disappointing sequel that wastes a talented cast.",
    "The screen is dim, the speakers are awful and it overheats.",
    "I would not recommend this phone to anyone.",
    "It was okay, nothing special but not bad either.",
    # encyclopedic facts (good QA contexts)
    "Paris is the capital and most populous city of France.",
    "The Eiffel Tower was completed in 1889 and is 330 metres tall.",
    "Berlin is the capital of Germany and has about 3.7 million inhabitants.",
    "The Rhine flows from the Swiss Alps to the North Sea.",
    "Marie Curie was the first woman to win a Nobel Prize.",
    "Albert Einstein published the theory of special relativity in 1905.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The Pacific Ocean is the largest and deepest of the world's oceans.",
    "Mount Everest, at 8,849 metres, is the highest mountain on Earth.",
    "The human heart has four chambers and pumps blood through the body.",
    "Python is a programming language created by Guido van Rossum.",
    "The first version of Python was released in February 1991.",
    "Shakespeare wrote Hamlet, Macbeth, Othello and King Lear.",
    "The Great Wall of China is more than 21,000 kilometres long.",
    "Tokyo is the capital of Japan and one of the largest cities in the world.",
    "The Amazon rainforest covers much of the Amazon basin in South America.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "The Moon orbits the Earth roughly once every 27 days.",
    "Jupiter is the largest planet in the Solar System.",
    "The Beatles were an English rock band formed in Liverpool in 1960.",
    "Leonardo da Vinci painted the Mona Lisa in the early sixteenth century.",
    "The Nile is often regarded as the longest river in the world.",
    "Vienna is the capital of Austria and lies on the river Danube.",
    "Zurich is the largest city in Switzerland.",
    # news / misc
    "The company reported record profits in the third quarter.",
    "Stock markets fell sharply on Monday after the announcement.",
    "The government announced new measures to reduce energy prices.",
    "Scientists discovered a new species of frog in the rainforest.",
    "The team won the championship after a dramatic penalty shootout.",
    "Heavy rain caused flooding in several northern towns.",
    "The new museum opens to the public next spring.",
    "Researchers trained a neural network to translate between languages.",
    "The weather will be sunny tomorrow with a light breeze.",
    "Please send the report to the manager before Friday.",
    "Can you tell me where the nearest train station is?",
    "She bought three apples, two oranges and a loaf of bread.",
    "He said: \"We'll meet at 5 p.m. near the old bridge.\"",
    "Email support@example.com or call +1 (555) 010-2030 for help.",
    "The meeting was moved from Tuesday to Thursday morning.",
    "Our flight to London was delayed by two hours.",
    "The children played football in the park until sunset.",
    "A cup of coffee costs $3.50 at the corner cafe.",
    "Machine learning models need data, compute and careful evaluation.",
    "Tokenization splits text into words, subwords or characters.",
)

GERMAN_SENTENCES: tuple[str, ...] = (
    "Das Wetter ist heute sehr schön.",
    "Ich habe gestern ein gutes Buch gelesen.",
    "Berlin ist die Hauptstadt von Deutschland.",
    "Der Film war langweilig und viel zu lang.",
    "Wir fahren am Wochenende in die Berge.",
    "Die Katze schläft auf dem Sofa.",
    "Können Sie mir bitte helfen?",
    "Das Essen in diesem Restaurant war ausgezeichnet.",
    "Der Zug kommt um acht Uhr in München an.",
    "Meine Schwester studiert Medizin in Heidelberg.",
    "Die Kinder spielen im Garten Fußball.",
    "Ich trinke morgens gerne einen Kaffee.",
    "Der Rhein fließt von den Alpen bis zur Nordsee.",
    "Das Museum ist montags geschlossen.",
    "Wir haben ein neues Auto gekauft.",
    "Die Besprechung wurde auf Donnerstag verschoben.",
    "Der Hund läuft schnell über die grüne Wiese.",
    "Es regnet seit drei Tagen ohne Pause.",
    "Die Regierung hat neue Maßnahmen angekündigt.",
    "Vielen Dank für Ihre freundliche Hilfe.",
    "Der Lehrer erklärt den Schülern die Aufgabe.",
    "Wien ist die Hauptstadt von Österreich.",
    "Ich möchte ein Zimmer für zwei Nächte reservieren.",
    "Die Straße ist wegen Bauarbeiten gesperrt.",
    "Maschinelles Lernen braucht viele Daten.",
)

#: Small English-German parallel set (used to make Marian's joint vocab bilingual).
PARALLEL_EN_DE: tuple[tuple[str, str], ...] = (
    ("The weather is very nice today.", "Das Wetter ist heute sehr schön."),
    ("I read a good book yesterday.", "Ich habe gestern ein gutes Buch gelesen."),
    ("Berlin is the capital of Germany.", "Berlin ist die Hauptstadt von Deutschland."),
    ("The cat is sleeping on the sofa.", "Die Katze schläft auf dem Sofa."),
    ("Can you help me, please?", "Können Sie mir bitte helfen?"),
    ("The children play football in the garden.", "Die Kinder spielen im Garten Fußball."),
    ("I like to drink coffee in the morning.", "Ich trinke morgens gerne einen Kaffee."),
    ("The museum is closed on Mondays.", "Das Museum ist montags geschlossen."),
    ("We bought a new car.", "Wir haben ein neues Auto gekauft."),
    ("Thank you for your kind help.", "Vielen Dank für Ihre freundliche Hilfe."),
)

_SUBJECTS = (
    "the teacher", "my neighbour", "a young doctor", "the old farmer", "our team",
    "the engineer", "a curious student", "the president", "my grandmother", "the pilot",
    "a famous singer", "the small robot", "every visitor", "the police officer", "her brother",
)
_VERBS = (
    "visited", "painted", "repaired", "described", "ignored", "admired", "cleaned",
    "designed", "photographed", "criticised", "discovered", "explained", "ordered", "sold",
    "borrowed", "measured", "translated", "delivered",
)
_ADJECTIVES = (
    "red", "ancient", "expensive", "broken", "quiet", "enormous", "tiny", "modern",
    "strange", "beautiful", "noisy", "wooden", "golden", "heavy", "fragile", "useful",
)
_OBJECTS = (
    "bicycle", "castle", "garden", "computer", "bridge", "letter", "painting", "kitchen",
    "telescope", "umbrella", "violin", "harbour", "library", "mountain", "village", "engine",
)
_PLACES = (
    "in London", "near the river", "at the station", "in a small village", "on Sunday",
    "during the storm", "after lunch", "in the evening", "before the holidays", "in 1999",
    "at the university", "behind the church", "in Hamburg", "on the island",
)

_DE_SUBJECTS = ("Der Lehrer", "Meine Nachbarin", "Ein junger Arzt", "Das Team", "Die Studentin", "Mein Großvater")
_DE_VERBS = ("besucht", "repariert", "beschreibt", "malt", "verkauft", "entdeckt", "erklärt")
_DE_OBJECTS = ("das Fahrrad", "die Brücke", "den Garten", "das Schloss", "die Bibliothek", "den Computer", "das Dorf")
_DE_PLACES = ("in Hamburg", "am Sonntag", "nach dem Mittagessen", "im Winter", "in der Stadt", "am Fluss")


def _generated_sentences(n_en: int = 240, n_de: int = 60) -> list[str]:
    rng = random.Random(1234)  # fixed: the corpus never changes
    out = []
    for _ in range(n_en):
        s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} the {rng.choice(_ADJECTIVES)} {rng.choice(_OBJECTS)} {rng.choice(_PLACES)}."
        out.append(s[0].upper() + s[1:])
    for _ in range(n_de):
        out.append(f"{rng.choice(_DE_SUBJECTS)} {rng.choice(_DE_VERBS)} {rng.choice(_DE_OBJECTS)} {rng.choice(_DE_PLACES)}.")
    return out


#: The shared tokenizer training corpus (deterministic, ~400 sentences).
CORPUS: tuple[str, ...] = (
    ENGLISH_SENTENCES
    + GERMAN_SENTENCES
    + tuple(en for en, _ in PARALLEL_EN_DE)
    + tuple(_generated_sentences())
    # digits/punctuation so every character class is covered
    + ("0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14 50% #1 & @ * + = / \\ | ~ ^ < > [ ] { } ( ) ; : ' \" ` ? ! , . - _",)
)


def _corpus_iter(batch: int = 64) -> Iterator[list[str]]:
    for i in range(0, len(CORPUS), batch):
        yield list(CORPUS[i : i + batch])


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _prepare(path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch for weight init without disturbing the caller's RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _model_json(tok) -> dict:
    """The ``model`` section of a trained ``tokenizers.Tokenizer``."""
    return json.loads(tok.to_str())["model"]


def _train_wordpiece(vocab_size: int = 1000) -> dict[str, int]:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # The trainer gives the "##x" continuation tokens ids in hash-map order, and those ids break
    # ties between equally frequent merges, so the vocabulary differs from run to run
    # (huggingface/tokenizers#1794).  Registering every "##x" up front (sorted) pins their ids.
    # Only the trained *vocab* is kept, so they do not end up as special tokens.
    chars = set()
    for sentence in CORPUS:
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(sentence)):
            chars.update(word)
    continuations = [f"##{c}" for c in sorted(chars)]
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=specials + continuations, min_frequency=1, show_progress=False
    )
    tok.train_from_iterator(_corpus_iter(), trainer=trainer, length=len(CORPUS))
    return dict(_model_json(tok)["vocab"])


def _canonical_unigram(vocab: list, n_special: int) -> list[tuple[str, float]]:
    """Make a ``UnigramTrainer`` result reproducible.

    Run to run, the trainer's scores differ by float noise (~1e-14, parallel sums) and the
    characters it appends at the end with penalty scores ``min - k * 1e-4`` come in hash-set
    order.  Round the scores, give the whole penalty band one score, and sort by
    (-score, piece): the segmentation is unchanged in substance and the file is byte-stable.
    """
    head = [(str(p), 0.0) for p, _ in vocab[:n_special]]
    rest = [(str(p), round(float(s), 8)) for p, s in vocab[n_special:]]
    floor = min(s for _, s in rest)
    rest = [(p, floor if s <= floor + 0.01 else s) for p, s in rest]
    rest.sort(key=lambda item: (-item[1], item[0]))
    return head + rest


def _bert_tokenizer(model_max_length: int):
    from transformers import BertTokenizerFast  # == BertTokenizer (tokenizers backend) in transformers 5

    return BertTokenizerFast(vocab=_train_wordpiece(), do_lower_case=True, model_max_length=model_max_length)


def _bert_config(tokenizer, **kwargs):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        type_vocab_size=2,
        pad_token_id=tokenizer.pad_token_id,
        **kwargs,
    )


def _seq2seq_generation_config(
    *,
    decoder_start_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
    bos_token_id: int | None = None,
    forced_bos_token_id: int | None = None,
    forced_eos_token_id: int | None = None,
    banned_ids: Sequence[int] = (),
):
    from transformers import GenerationConfig

    # ``bad_words_ids`` (not ``suppress_tokens``) because it runs before ForcedBOS in transformers'
    # processor order, so BART can still be forced to emit <s> first.
    return GenerationConfig(
        bad_words_ids=[[int(i)] for i in banned_ids] or None,
        decoder_start_token_id=decoder_start_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        forced_bos_token_id=forced_bos_token_id,
        forced_eos_token_id=forced_eos_token_id,
        max_new_tokens=MAX_NEW_TOKENS,
        min_length=0,
        num_beams=1,
        do_sample=False,
        no_repeat_ngram_size=0,
    )


# ---------------------------------------------------------------------------
# encoder-only builders
# ---------------------------------------------------------------------------


def build_bert_classifier(path, labels: Sequence[str] = ("negative", "positive"), seed: int = 0) -> pathlib.Path:
    """Tiny ``BertForSequenceClassification`` (hidden 32, 2 layers, 2 heads) + lower-cased WordPiece.

    ``config.id2label``/``label2id`` come from ``labels`` (in order); ``num_labels == len(labels)``.
    """
    from transformers import BertForSequenceClassification

    path = _prepare(path)
    labels = [str(label) for label in labels]
    if not labels:
        raise ValueError("labels must not be empty")
    tokenizer = _bert_tokenizer(model_max_length=512)
    config = _bert_config(
        tokenizer,
        id2label={i: label for i, label in enumerate(labels)},
        label2id={label: i for i, label in enumerate(labels)},
        problem_type="single_label_classification",
    )
    with _seeded(seed):
        model = BertForSequenceClassification(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_bert_qa(path, seed: int = 0) -> pathlib.Path:
    """Tiny ``BertForQuestionAnswering``; tokenizer ``model_max_length`` 128 (position table still 512)
    so that realistic QA contexts need several overlapping windows."""
    from transformers import BertForQuestionAnswering

    path = _prepare(path)
    tokenizer = _bert_tokenizer(model_max_length=128)
    config = _bert_config(tokenizer)
    with _seeded(seed):
        model = BertForQuestionAnswering(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_sentence_encoder(path, seed: int = 0) -> pathlib.Path:
    """Tiny ``BertModel`` (no task head; pooler kept) + WordPiece, laid out like ``sentence-transformers/all-MiniLM-L6-v2``.

    Load with ``AutoModel``/``AutoTokenizer`` and mean-pool ``last_hidden_state`` over the attention
    mask; the directory also has ``modules.json``, ``sentence_bert_config.json`` and
    ``1_Pooling/config.json`` (mean pooling) + ``2_Normalize`` so ``SentenceTransformer(path)`` works too.
    """
    from transformers import BertModel

    path = _prepare(path)
    tokenizer = _bert_tokenizer(model_max_length=512)
    config = _bert_config(tokenizer)
    with _seeded(seed):
        # keep the pooler (as all-MiniLM's checkpoint does): AutoModel builds one, so a checkpoint
        # without it would load with randomly initialised, non-deterministic pooler weights
        model = BertModel(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)

    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (path / "modules.json").write_text(json.dumps(modules, indent=2))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}, indent=2))
    pooling = {
        "word_embedding_dimension": config.hidden_size,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (path / "2_Normalize").mkdir(exist_ok=True)
    return path


# ---------------------------------------------------------------------------
# seq2seq builders
# ---------------------------------------------------------------------------

_T5_EXTRA_IDS = 10


#: T5 shapes: "tiny" for tests; "small" has t5-small's dimensions (60M parameters with its vocabulary),
#: for benchmarks that should spend their time as a real checkpoint would.
T5_SIZES = {
    "tiny": dict(d_model=32, d_ff=64, d_kv=16, num_layers=2, num_decoder_layers=2, num_heads=2,
                 relative_attention_num_buckets=8, relative_attention_max_distance=32),
    "small": dict(d_model=512, d_ff=2048, d_kv=64, num_layers=6, num_decoder_layers=6, num_heads=8,
                  relative_attention_num_buckets=32, relative_attention_max_distance=128),
}


#: the shape shared by the tiny BART and Marian models (both are BART-style encoder-decoders)
TINY_BART_LIKE = dict(
    d_model=32, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
    encoder_attention_heads=2, decoder_attention_heads=2, max_position_embeddings=512,
    dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
)


def build_t5(path, seed: int = 0, size: str = "tiny") -> pathlib.Path:
    """``T5ForConditionalGeneration`` of the given size (see ``T5_SIZES``; tiny: d_model 32, d_ff 64,
    2+2 layers, 2 heads, d_kv 16) with a Unigram ``T5Tokenizer`` (fast, tokenizer.json): ``<pad>``=0,
    ``</s>``=1, ``<unk>``=2, plus 10 ``<extra_id_N>`` sentinels at the end of the vocab (as in real T5)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Config, T5ForConditionalGeneration, T5TokenizerFast

    path = _prepare(path)
    tok = Tokenizer(models.Unigram())
    # same pre-tokenization as transformers' T5Tokenizer, so the trained pieces fit it
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=1000,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_iter(), trainer=trainer, length=len(CORPUS))
    vocab = _canonical_unigram(_model_json(tok)["vocab"], n_special=3)
    assert [p for p, _ in vocab[:3]] == ["<pad>", "</s>", "<unk>"], vocab[:3]
    known = {p for p, _ in vocab}
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(_T5_EXTRA_IDS - 1, -1, -1) if f"<extra_id_{i}>" not in known]
    tokenizer = T5TokenizerFast(vocab=vocab, extra_ids=_T5_EXTRA_IDS, model_max_length=512)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)

    config = T5Config(
        vocab_size=len(tokenizer),
        **T5_SIZES[size],
        feed_forward_proj="relu",
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    with _seeded(seed):
        model = T5ForConditionalGeneration(config).eval()
    model.generation_config = _seq2seq_generation_config(
        decoder_start_token_id=0,
        eos_token_id=1,
        pad_token_id=0,
        banned_ids=[0, 2] + [tokenizer.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(_T5_EXTRA_IDS)],
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_bart(path, seed: int = 0) -> pathlib.Path:
    """Tiny ``BartForConditionalGeneration`` (d_model 32, 2+2 layers, ffn 64, 2 heads) with a
    byte-level BPE ``BartTokenizer`` (= ``RobertaTokenizer`` in transformers 5):
    ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, ``<mask>``=4.  Generation starts from ``</s>``
    and forces ``<s>`` first, as facebook/bart-* does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import BartConfig, BartForConditionalGeneration, BartTokenizerFast

    path = _prepare(path)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_iter(), trainer=trainer, length=len(CORPUS))
    m = _model_json(tok)
    merges = [tuple(x.split(" ")) if isinstance(x, str) else tuple(x) for x in m["merges"]]
    tokenizer = BartTokenizerFast(vocab=dict(m["vocab"]), merges=merges, model_max_length=512)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in specials]
    assert ids == [0, 1, 2, 3, 4], ids

    config = BartConfig(
        vocab_size=len(tokenizer),
        **TINY_BART_LIKE,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=2,
    )
    with _seeded(seed):
        model = BartForConditionalGeneration(config).eval()
    model.generation_config = _seq2seq_generation_config(
        decoder_start_token_id=2, bos_token_id=0, eos_token_id=2, pad_token_id=1, forced_bos_token_id=0, forced_eos_token_id=2,
        banned_ids=[0, 1, 3, 4],
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_marian(path, seed: int = 0, source_lang: str = "en", target_lang: str = "de") -> pathlib.Path:
    """Tiny ``MarianMTModel`` (d_model 32, 2+2 layers, ffn 64, 2 heads) + ``MarianTokenizer``.

    A joint English/German sentencepiece unigram model is trained in memory and written as both
    ``source.spm`` and ``target.spm``; ``vocab.json`` follows opus-mt: ``</s>``=0, ``<unk>``=1,
    ``<pad>``=last id (also the decoder start token).  ``MarianTokenizer`` is a *slow*
    (python) tokenizer, so it has no ``return_offsets_mapping``.

    Raises ``ImportError`` if the ``sentencepiece`` package is missing (callers in tests:
    ``pytest.importorskip("sentencepiece")`` first, or catch ImportError and skip).
    """
    try:
        import sentencepiece as spm
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "build_marian needs the 'sentencepiece' package (pip install sentencepiece) to train "
            "source.spm/target.spm for MarianTokenizer"
        ) from exc
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    path = _prepare(path)
    sentences = list(CORPUS) + [de for _, de in PARALLEL_EN_DE]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=buf,
        model_type="unigram",
        vocab_size=600,
        hard_vocab_limit=False,
        character_coverage=1.0,
        eos_id=0,
        unk_id=1,
        bos_id=-1,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    spm_bytes = buf.getvalue()
    (path / "source.spm").write_bytes(spm_bytes)
    (path / "target.spm").write_bytes(spm_bytes)
    sp = spm.SentencePieceProcessor(model_proto=spm_bytes)
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    assert vocab["</s>"] == 0 and vocab["<unk>"] == 1
    vocab["<pad>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=1))

    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*sacremoses.*")
        tokenizer = MarianTokenizer(
            source_spm=str(path / "source.spm"),
            target_spm=str(path / "target.spm"),
            vocab=str(path / "vocab.json"),
            source_lang=source_lang,
            target_lang=target_lang,
            model_max_length=512,
        )
    pad_id = vocab["<pad>"]
    assert tokenizer.pad_token_id == pad_id and tokenizer.eos_token_id == 0

    config = MarianConfig(
        vocab_size=len(vocab),
        **TINY_BART_LIKE,
        pad_token_id=pad_id,
        eos_token_id=0,
        decoder_start_token_id=pad_id,
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
    )
    with _seeded(seed):
        model = MarianMTModel(config).eval()
    model.generation_config = _seq2seq_generation_config(
        decoder_start_token_id=pad_id, eos_token_id=0, pad_token_id=pad_id, forced_eos_token_id=0, banned_ids=[pad_id, 1]
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
