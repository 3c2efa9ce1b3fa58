"""Tokenizers (reserved chat markers, round trips, caching) and corpus splitting/validation."""

from __future__ import annotations

from pathlib import Path

from alpha.config import CHAT_MARKERS
from alpha.data.corpus import CorpusStats, is_valid_conversation, is_validation, iter_chat_documents
from alpha.data.tokenizer import BpeTokenizer, CharTokenizer, build_or_load_tokenizer, load_tokenizer
from alpha.data.tokens import prepare_tokens

CONVERSATION = "<|user|> Wie heißt du? 🙂 <|assistant|> Ich heiße Alpha. <|end_of_text|>"


def test_chat_markers_are_single_reserved_tokens_in_both_tokenizers() -> None:
    bpe = BpeTokenizer.train(iter([CONVERSATION] * 50), vocab_size=300)
    char = CharTokenizer.train(iter([CONVERSATION]))
    for tok in (bpe, char):
        for marker in CHAT_MARKERS:
            assert len(tok.encode(marker)) == 1
        assert tok.decode(tok.encode(CONVERSATION)) == CONVERSATION
        assert tok.encode(CONVERSATION)[-1] == tok.eot_id
        again = load_tokenizer(tok.to_json())
        assert again.encode(CONVERSATION) == tok.encode(CONVERSATION)


def test_byte_level_bpe_encodes_text_it_never_saw() -> None:
    bpe = BpeTokenizer.train(iter(["plain ascii text"] * 20), vocab_size=300)
    unseen = "Ωμέγα 漢字 ✓"
    assert bpe.decode(bpe.encode(unseen)) == unseen


def test_tokenizer_is_trained_once_per_data_and_settings(tmp_path: Path) -> None:
    calls = []

    def texts():
        calls.append(1)
        yield from [CONVERSATION] * 20

    a = build_or_load_tokenizer("bpe", 300, "digest-a", texts())
    b = build_or_load_tokenizer("bpe", 300, "digest-a", texts())
    c = build_or_load_tokenizer("bpe", 320, "digest-a", texts())
    assert a.to_json() == b.to_json()
    assert len(calls) == 2  # the second request came from the cache; vocab 320 trained anew
    assert c.vocab_size != a.vocab_size or c.to_json() != a.to_json()


def test_conversation_validation() -> None:
    assert is_valid_conversation(CONVERSATION)
    assert is_valid_conversation("<|user|> a <|assistant|> b <|user|> c <|assistant|> d <|end_of_text|>")
    assert not is_valid_conversation("<|assistant|> b <|end_of_text|>")  # must start with the user
    assert not is_valid_conversation(
        "<|user|> a <|user|> b <|assistant|> c <|end_of_text|>"
    )  # no alternation
    assert not is_valid_conversation("<|user|> a <|assistant|> b")  # no end marker
    assert not is_valid_conversation("<|user|> a <|assistant|> b <|user|> c <|end_of_text|>")  # user last
    assert not is_valid_conversation("<|user|>  <|assistant|> b <|end_of_text|>")  # empty turn


def test_malformed_lines_are_counted_not_silently_dropped(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text(f"{CONVERSATION}\nnot a conversation\n\n{CONVERSATION}\n<|user|> x <|end_of_text|>\n")
    stats = CorpusStats()
    docs = list(iter_chat_documents(path, stats))
    assert len(docs) == 2 and stats.malformed == 2 and stats.malformed_lines == [2, 5]


def test_split_is_deterministic_by_content_and_near_ten_percent() -> None:
    docs = [f"<|user|> q{i} <|assistant|> a{i} <|end_of_text|>" for i in range(5000)]
    val = [d for d in docs if is_validation(d)]
    assert 0.08 < len(val) / len(docs) < 0.12
    assert val == [d for d in reversed(docs) if is_validation(d)][::-1]


def test_token_cache_is_keyed_by_the_tokenizer(chat_file: Path) -> None:
    text = chat_file.read_text().splitlines()
    small = BpeTokenizer.train(iter(text), vocab_size=300)
    large = BpeTokenizer.train(iter(text), vocab_size=400)
    a = prepare_tokens(str(chat_file), None, "chat", small, show_progress=False)
    b = prepare_tokens(str(chat_file), None, "chat", large, show_progress=False)
    assert len(a.train) > len(b.train)  # a bigger vocab compresses more: a stale cache would not
    assert a.train.dtype.name == "uint16"
    again = prepare_tokens(str(chat_file), None, "chat", small, show_progress=False)
    assert (again.train == a.train).all() and (again.val == a.val).all()
    assert a.meta["train_documents"] + a.meta["val_documents"] == 1500
    assert 0.05 < a.meta["val_documents"] / 1500 < 0.2  # ~10%, but repeated conversations move together
