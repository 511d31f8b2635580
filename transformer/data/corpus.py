"""Raw documents from the configured source, as a Hugging Face ``datasets.Dataset`` with a ``text`` column.

Sources: the running Python's standard-library source (present wherever the toolkit installs, so the
default run needs no download), local text / JSON / CSV / Parquet files, or a hub dataset by name.
"""

from __future__ import annotations

import glob
import os
import sysconfig
from pathlib import Path

from .config import DataConfig

_EXTENSIONS = {".txt": "text", ".text": "text", ".md": "text", ".json": "json", ".jsonl": "json",
               ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
# Data files the shipped configs name, with where a user gets them (the error for a missing one says so).
TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
KNOWN_DOWNLOADS = {"tinyshakespeare.txt": TINY_SHAKESPEARE_URL}


def python_stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files, sorted, without tests (deterministic for a given Python)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in sorted(root.rglob("*.py"))
             if not {"test", "tests", "idle_test", "site-packages", "__pycache__"} & set(p.relative_to(root).parts)]
    if not files:
        raise FileNotFoundError(f"no Python source files under the standard library at {root}")
    return files


def _resolve_files(spec: str, fmt: str | None = None) -> list[str]:
    """Files named by ``data.path`` (files, directories, globs; comma-separated). Directories contribute the
    files of one format only (``fmt``, or the single format found there), skipping hidden paths."""
    files: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if os.path.isdir(part):
            found = [p for p in sorted(Path(part).rglob("*")) if p.is_file() and p.suffix.lower() in _EXTENSIONS
                     and not any(x.startswith(".") for x in p.relative_to(part).parts)]
            formats = sorted({_EXTENSIONS[p.suffix.lower()] for p in found})
            if fmt is None and len(formats) > 1:
                raise ValueError(f"data.path directory {part!r} holds {' and '.join(formats)} files; set data.file_format to pick one")
            files += [str(p) for p in found if fmt is None or _EXTENSIONS[p.suffix.lower()] == fmt]
        elif any(ch in part for ch in "*?["):
            files += sorted(glob.glob(part, recursive=True))
        elif os.path.isfile(part):
            files.append(part)
        else:
            hint = KNOWN_DOWNLOADS.get(Path(part).name)
            raise FileNotFoundError(f"data.path: {part!r} does not exist" + (
                f"; download it: mkdir -p {Path(part).parent} && curl -L -o {part} {hint}" if hint else ""))
    if not files:
        raise FileNotFoundError(f"data.path={spec!r} matches no files")
    return files


def check_text_file(path: str | os.PathLike, *, what: str = "data file", sample_bytes: int = 1 << 16) -> None:
    """A one-line error if ``path`` is not UTF-8 text: NUL bytes or undecodable bytes in its first
    ``sample_bytes`` (a binary file given as text), or nothing but whitespace."""
    with open(path, "rb") as f:
        head = f.read(sample_bytes)
        more = f.read(1) != b""
    if b"\x00" in head:
        raise ValueError(f"{what} {str(path)!r} is binary (it holds NUL bytes), not UTF-8 text; give a text, JSON, "
                         f"CSV or Parquet file (and data.file_format when the extension does not say)")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if not (more and err.start >= len(head) - 4):  # a character cut at the sample's end is fine
            raise ValueError(f"{what} {str(path)!r} is not UTF-8 text (byte {head[err.start]:#04x} at offset "
                             f"{err.start}); convert it to UTF-8") from None
        text = head[: err.start].decode("utf-8")
    if not more and not text.strip():
        raise ValueError(f"{what} {str(path)!r} holds only whitespace; there is no text to train on")


def dataset_read_error(files: list[str], fmt: str, err: BaseException) -> str:
    """A one-line message for ``datasets.load_dataset`` failing on local files (its errors name neither)."""
    cause = err.__cause__ or err
    detail = " ".join(str(cause).split())[:200] or type(cause).__name__
    if "corresponds to no data" in detail:
        return f"{', '.join(files)} hold(s) no data rows (only a header?)"
    return f"cannot read {', '.join(files)} as {fmt} (set data.file_format if that is not its format): {detail}"


def check_data_files(cfg: DataConfig) -> list[str]:
    """The files ``data.*`` names, checked before any work: they exist, are not empty, and text / JSON /
    CSV files are UTF-8 text. Returns them ([] for sources that are not files)."""
    if cfg.source != "files":
        return []
    files = _resolve_files(cfg.path, cfg.file_format)
    fmt = cfg.file_format or _EXTENSIONS.get(Path(files[0]).suffix.lower())
    if fmt is None:
        raise ValueError(f"data.file_format is not set and {files[0]!r} has no known extension; set data.file_format to one of "
                         f"text, json, csv, parquet")
    for f in files:
        if os.path.getsize(f) == 0:
            raise ValueError(f"data file {f!r} is empty")
        if not os.access(f, os.R_OK):
            raise PermissionError(f"data file {f!r} is not readable")
        if fmt != "parquet":
            check_text_file(f)
    return files


def load_documents(cfg: DataConfig):
    """-> ``datasets.Dataset`` with one document per row in column ``text``, capped by max_documents / max_chars."""
    import datasets

    if cfg.source == "python_stdlib":
        texts, total = [], 0
        for path in python_stdlib_files():
            text = path.read_text(encoding="utf-8", errors="replace")
            if not text.strip():
                continue
            texts.append(text)
            total += len(text)
            if (cfg.max_documents and len(texts) >= cfg.max_documents) or (cfg.max_chars and total >= cfg.max_chars):
                break
        ds = datasets.Dataset.from_dict({"text": texts})
    elif cfg.source == "files":
        files = check_data_files(cfg)
        fmt = cfg.file_format or _EXTENSIONS.get(Path(files[0]).suffix.lower())
        kwargs = {"sample_by": "document"} if fmt == "text" else {}
        try:
            ds = datasets.load_dataset(fmt, data_files=files, split="train", **kwargs)
        except Exception as err:  # datasets wraps parser errors in its own types; name the files instead
            raise ValueError(dataset_read_error(files, fmt, err)) from None
    else:
        try:
            ds = datasets.load_dataset(cfg.name, cfg.subset, split=cfg.split)
        except Exception as err:  # offline / unknown name: say what to do instead
            raise ValueError(
                f"could not load hub dataset data.name={cfg.name!r} (subset={cfg.subset!r}, split={cfg.split!r}): "
                f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. Without network access, "
                f"download it elsewhere and use data.source=files with data.path."
            ) from None
    if cfg.text_column not in ds.column_names:
        names = [n if len(n) <= 40 else n[:37] + "..." for n in ds.column_names[:20]]
        raise ValueError(f"data.text_column={cfg.text_column!r} is not a column of the data (columns: {names})")
    if not _is_text_feature(ds.features[cfg.text_column]):
        raise ValueError(f"data.text_column={cfg.text_column!r} holds {ds.features[cfg.text_column]}, not text; "
                         f"name the column with the documents' text")
    if cfg.text_column != "text":
        ds = ds.rename_column(cfg.text_column, "text")
    ds = ds.select_columns(["text"]).filter(lambda batch: [bool(t and t.strip()) for t in batch], batched=True,
                                            input_columns="text")
    if cfg.max_documents:
        ds = ds.select(range(min(cfg.max_documents, len(ds))))
    if cfg.max_chars and cfg.source != "python_stdlib":
        lengths, total, keep = ds.map(lambda b: {"n": [len(t) for t in b]}, batched=True, input_columns="text")["n"], 0, 0
        for n in lengths:
            keep += 1
            total += n
            if total >= cfg.max_chars:
                break
        ds = ds.select(range(keep))
    if len(ds) == 0:
        raise ValueError(f"the configured data ({cfg.path or cfg.name or cfg.source}) holds no non-empty documents")
    return ds


def _is_text_feature(feature) -> bool:
    return getattr(feature, "dtype", None) in ("string", "large_string")
