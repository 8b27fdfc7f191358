"""The real CLIP tokenizer, built offline from open_clip's BPE file.

OpenAI's CLIP vocabulary is fully determined by ``bpe_simple_vocab_16e6.txt.gz``
(shipped inside the ``open_clip`` package): 256 byte symbols, the same with
``</w>``, the first 48,894 merges joined, then ``<|startoftext|>`` and
``<|endoftext|>`` = 49,408 entries. We derive ``vocab.json``/``merges.txt`` from
it once, cache them in a directory and build ``transformers.CLIPTokenizer`` from
them, so no hub access is ever needed. ``open_clip`` itself is never imported
(it needs torchvision); we only locate its package directory.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

from core.errors import ModelLoadError

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
# CLIP keeps merges[1 : 49152 - 256 - 2 + 1] of the file (line 0 is a header).
NUM_MERGES = 49152 - 256 - 2
CONTEXT_LENGTH = 77
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
# OpenCLIP pads with token id 0, which is "!" (SD2's and SDXL's second tokenizer).
OPENCLIP_PAD = "!"
DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "hyperforge-clip-tokenizer"


def bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable unicode character, as GPT-2/CLIP byte-level BPE does."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def bpe_file_path() -> Path:
    """Locate open_clip's BPE vocabulary file without importing open_clip."""
    spec = importlib.util.find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / BPE_FILE
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"cannot find {BPE_FILE}: install open_clip_torch (--no-deps is enough) for the CLIP vocabulary"
    )


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """Derive CLIP's vocabulary and merge list (cached per process)."""
    lines = gzip.decompress(bpe_file_path().read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : NUM_MERGES + 1]
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    vocab_list += ["".join(m.split()) for m in merges]
    vocab_list += [BOS, EOS]
    if len(vocab_list) != VOCAB_SIZE:
        raise ModelLoadError(f"{BPE_FILE} gave {len(vocab_list)} vocabulary entries, expected {VOCAB_SIZE}")
    return {token: i for i, token in enumerate(vocab_list)}, merges


def write_vocab_files(directory: Path) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` into ``directory`` (atomically) and return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    vocab, merges = _vocab_and_merges()
    payloads = {
        vocab_path: json.dumps(vocab, ensure_ascii=False),
        merges_path: "#version: 0.2\n" + "\n".join(merges) + "\n",
    }
    for path, text in payloads.items():
        if path.is_file() and path.stat().st_size > 0:
            continue
        # Write-then-rename: several processes may build the cache at once.
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    return vocab_path, merges_path


def clip_tokenizer(*, pad_token: str = EOS, cache_dir: Path | None = None) -> CLIPTokenizer:
    """Return OpenAI CLIP's tokenizer (77 tokens); ``pad_token='!'`` gives OpenCLIP's padding."""
    vocab_path, merges_path = write_vocab_files(cache_dir or DEFAULT_CACHE_DIR)
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    lines = merges_path.read_text(encoding="utf-8").split("\n")[1:-1]
    # tokenizers wants (left, right) pairs.
    merges = [tuple(line.split(" ")) for line in lines]
    tokenizer = CLIPTokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]
        unk_token=EOS,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=pad_token,
        model_max_length=CONTEXT_LENGTH,
    )
    return tokenizer


def load_tokenizer(directory: Path) -> CLIPTokenizer:
    """Load a tokenizer saved in a diffusers folder (``tokenizer/``), offline."""
    if not (directory / "vocab.json").is_file() and not (directory / "tokenizer.json").is_file():
        raise ModelLoadError(f"{directory} holds no tokenizer (vocab.json or tokenizer.json)")
    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the tokenizer in {directory}: {exc}") from exc
    return tokenizer


def tokenizers_for(arch: str, folder: Path | None = None) -> tuple[CLIPTokenizer, CLIPTokenizer | None]:
    """An arch's (tokenizer, tokenizer_2): the folder's saved ones, else CLIP's with the arch's padding."""
    # SD1 pads with the end token; OpenCLIP (SD2, SDXL's second encoder) pads with "!" (id 0).
    pads = {"sd1": (EOS, None), "sd2": (OPENCLIP_PAD, None), "sdxl": (EOS, OPENCLIP_PAD)}[arch]
    found: list[CLIPTokenizer | None] = []
    for sub, pad in zip(("tokenizer", "tokenizer_2"), pads, strict=True):
        if pad is None:
            found.append(None)
        elif folder is not None and (folder / sub).is_dir():
            found.append(load_tokenizer(folder / sub))
        else:
            found.append(clip_tokenizer(pad_token=pad))
    assert found[0] is not None
    return found[0], found[1]
