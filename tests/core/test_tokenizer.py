"""The CLIP tokenizer built offline from open_clip's BPE file is OpenAI CLIP's, token for token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.models.tokenizer import (
    EOS,
    NUM_MERGES,
    OPENCLIP_PAD,
    VOCAB_SIZE,
    bytes_to_unicode,
    clip_tokenizer,
    load_tokenizer,
    write_vocab_files,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clip-cache")


def test_vocab_files_have_clips_layout(cache: Path) -> None:
    vocab_path, merges_path = write_vocab_files(cache)
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    merges = merges_path.read_text(encoding="utf-8").split("\n")
    assert len(vocab) == VOCAB_SIZE == 49408
    symbols = list(bytes_to_unicode().values())
    # 256 byte symbols, the same with </w>, the merges joined, then the two specials.
    assert [vocab[s] for s in symbols] == list(range(256))
    assert vocab["!</w>"] == 256
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert merges[0] == "#version: 0.2" and len(merges[1:-1]) == NUM_MERGES == 48894
    assert vocab["".join(merges[1].split())] == 512  # the first merge is the first joined entry


def test_known_token_ids(cache: Path) -> None:
    tok = clip_tokenizer(cache_dir=cache)
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok("hello world").input_ids == [49406, 3306, 1002, 49407]
    # CLIP lower-cases and collapses whitespace.
    assert tok("A  Photo of a CAT").input_ids == tok("a photo of a cat").input_ids


def test_padding_and_truncation_to_77(cache: Path) -> None:
    sd1 = clip_tokenizer(cache_dir=cache)
    openclip = clip_tokenizer(pad_token=OPENCLIP_PAD, cache_dir=cache)
    padded = sd1("a cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[3:] == [49407] * 74  # SD1 pads with <|endoftext|>
    padded2 = openclip("a cat", padding="max_length", max_length=77).input_ids
    assert padded2[:4] == [49406, 320, 2368, 49407] and padded2[4:] == [0] * 73  # OpenCLIP pads with "!" = 0
    long = sd1(" ".join(["cat"] * 100), truncation=True, max_length=sd1.model_max_length).input_ids
    assert sd1.model_max_length == 77 and len(long) == 77 and long[0] == 49406 and long[-1] == 49407


def test_saved_tokenizer_reloads_identically(cache: Path, tmp_path: Path) -> None:
    tok = clip_tokenizer(pad_token=OPENCLIP_PAD, cache_dir=cache)
    tok.save_pretrained(str(tmp_path))
    again = load_tokenizer(tmp_path)
    assert again.pad_token == OPENCLIP_PAD and again.eos_token == EOS and again.model_max_length == 77
    text = "an oil painting of a lighthouse, 1889"
    assert again(text).input_ids == tok(text).input_ids
