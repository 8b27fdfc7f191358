"""The dataset report (accepted, rejected, sizes, caption stats, warnings); torch-free."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from core.data.captions import CLIP_MAX_TOKENS, TokenCounter, estimate_tokens
from core.data.decode import ImageInfo

MAX_FILES_LISTED = 50  # per warning, so a report of a huge dataset stays small


@dataclass(frozen=True)
class Rejection:
    """One file that is not usable, with a stable ``code`` and a human ``detail``."""

    file: str
    code: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        """Plain JSON-ready form."""
        return {"file": self.file, "code": self.code, "detail": self.detail}


@dataclass(frozen=True)
class Ignored:
    """A file skipped as junk (``__MACOSX/``, ``.DS_Store``, dotfiles), not counted as a rejection."""

    file: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """Plain JSON-ready form."""
        return {"file": self.file, "reason": self.reason}


@dataclass(frozen=True)
class DatasetWarning:
    """Something usable but worth a look, with the files concerned (at most ``MAX_FILES_LISTED``)."""

    code: str
    detail: str
    files: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready form."""
        return {"code": self.code, "detail": self.detail, "files": list(self.files)}


@dataclass(frozen=True)
class CaptionStats:
    """How captions were found and how long they are (in estimated CLIP tokens)."""

    with_txt: int = 0
    from_filename: int = 0
    empty: int = 0
    tokens_min: int = 0
    tokens_max: int = 0
    tokens_mean: float = 0.0
    over_limit: int = 0

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready form."""
        return {
            "with_txt": self.with_txt,
            "from_filename": self.from_filename,
            "empty": self.empty,
            "tokens_min": self.tokens_min,
            "tokens_max": self.tokens_max,
            "tokens_mean": round(self.tokens_mean, 2),
            "over_limit": self.over_limit,
            "token_limit": CLIP_MAX_TOKENS,
        }


@dataclass(frozen=True)
class DatasetReport:
    """The outcome of scanning a dataset; ``to_dict()`` is what the API shows as ``report``."""

    accepted: int
    rejected: tuple[Rejection, ...]
    sizes: tuple[tuple[str, int], ...]
    captions: CaptionStats
    warnings: tuple[DatasetWarning, ...]
    ignored: tuple[Ignored, ...]
    total_bytes: int

    @property
    def caption_count(self) -> int:
        """Images whose caption came from a ``.txt`` file."""
        return self.captions.with_txt

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready form."""
        return {
            "accepted": self.accepted,
            "rejected": [r.to_dict() for r in self.rejected],
            "sizes": dict(self.sizes),
            "captions": self.captions.to_dict(),
            "warnings": [w.to_dict() for w in self.warnings],
            "ignored": [i.to_dict() for i in self.ignored],
            "total_bytes": self.total_bytes,
        }


@dataclass
class ReportBuilder:
    """Collects per-file outcomes while scanning, then freezes them into a ``DatasetReport``."""

    count_tokens: TokenCounter | None = None
    caption_source: str = "txt"
    accepted: list[tuple[str, ImageInfo, str, bool]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)
    unpaired_txt: list[str] = field(default_factory=list)
    unused_txt: list[str] = field(default_factory=list)
    bad_utf8: list[str] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)

    def accept(self, name: str, info: ImageInfo, caption: str, from_txt: bool) -> None:
        """Record an accepted image and its caption."""
        self.accepted.append((name, info, caption, from_txt))

    def reject(self, name: str, code: str, detail: str) -> None:
        """Record a rejected file."""
        self.rejected.append(Rejection(name, code, detail))

    def ignore(self, name: str, reason: str) -> None:
        """Record a junk file that was skipped."""
        self.ignored.append(Ignored(name, reason))

    def build(self) -> DatasetReport:
        """Freeze into a report, computing sizes, caption stats and warnings."""
        sizes = Counter(f"{info.width}x{info.height}" for _, info, _, _ in self.accepted)
        tokens = [estimate_tokens(caption, self.count_tokens) for _, _, caption, _ in self.accepted]
        long_files = [
            name for (name, _, _, _), n in zip(self.accepted, tokens, strict=True) if n > CLIP_MAX_TOKENS
        ]
        empty_files = [name for name, _, caption, _ in self.accepted if not caption]
        with_txt = sum(1 for *_, from_txt in self.accepted if from_txt)
        stats = CaptionStats(
            with_txt=with_txt,
            from_filename=len(self.accepted) - with_txt,
            empty=len(empty_files),
            tokens_min=min(tokens, default=0),
            tokens_max=max(tokens, default=0),
            tokens_mean=sum(tokens) / len(tokens) if tokens else 0.0,
            over_limit=len(long_files),
        )
        return DatasetReport(
            accepted=len(self.accepted),
            rejected=tuple(self.rejected),
            sizes=tuple(sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))),
            captions=stats,
            warnings=tuple(self._warnings(long_files, empty_files)),
            ignored=tuple(self.ignored),
            total_bytes=sum(info.bytes for _, info, _, _ in self.accepted),
        )

    def _warnings(self, long_files: list[str], empty_files: list[str]) -> list[DatasetWarning]:
        """The warnings worth showing, in a stable order."""
        out: list[DatasetWarning] = []
        if long_files:
            how = "counted by the tokenizer" if self.count_tokens else "estimated as words plus punctuation"
            out.append(
                _warn(
                    "caption_too_long",
                    f"{len(long_files)} caption(s) exceed {CLIP_MAX_TOKENS} "
                    f"CLIP tokens ({how}); the rest is cut off in training",
                    long_files,
                )
            )
        if empty_files:
            out.append(
                _warn("empty_caption", f"{len(empty_files)} image(s) have an empty caption", empty_files)
            )
        out.extend(self._duplicates())
        if self.unpaired_txt:
            out.append(
                _warn(
                    "unpaired_caption",
                    f"{len(self.unpaired_txt)} .txt file(s) match no image",
                    self.unpaired_txt,
                )
            )
        if self.unused_txt:
            out.append(
                _warn(
                    "caption_file_unused",
                    f"{len(self.unused_txt)} .txt file(s) ignored because captions come from file names",
                    self.unused_txt,
                )
            )
        if self.bad_utf8:
            out.append(
                _warn(
                    "caption_not_utf8",
                    f"{len(self.bad_utf8)} caption file(s) are not valid UTF-8; "
                    "undecodable bytes were replaced",
                    self.bad_utf8,
                )
            )
        for name, note in self.notes:
            out.append(_warn("image_note", note, [name]))
        if self.caption_source == "txt" and self.accepted and not any(t for *_, t in self.accepted):
            out.append(_warn("no_caption_files", "no .txt captions found: captions come from file names", []))
        return out

    def _duplicates(self) -> list[DatasetWarning]:
        """One warning per group of byte-identical images."""
        groups: dict[str, list[str]] = defaultdict(list)
        for name, info, _, _ in self.accepted:
            groups[info.sha256].append(name)
        return [
            _warn("duplicate_image", f"{len(names)} identical images (sha256 {digest[:12]})", names)
            for digest, names in groups.items()
            if len(names) > 1
        ]


def _warn(code: str, detail: str, files: list[str]) -> DatasetWarning:
    """A warning listing at most ``MAX_FILES_LISTED`` files."""
    return DatasetWarning(code, detail, tuple(files[:MAX_FILES_LISTED]))
