"""Custom tasks without code: a YAML file that declares a task over a local JSONL file.

Pass the YAML path in --tasks (e.g. `--tasks hellaswag,evals/capitals.yaml`). Keys:

    name: capitals              # optional; default: the YAML file's stem
    type: multiple_choice       # or: generation
    data: capitals.jsonl        # JSONL, one item per line; relative paths are relative to the YAML file
    id_field: id                # optional; default: the line number

  multiple_choice (scored by log-likelihood like the built-in tasks; reports acc and acc_norm):
    context_field: context      # default "context"
    template: "Q: {question}\nA:"  # optional: build the context from fields instead (Python str.format)
    choices_field: choices      # a list of strings
    gold_field: gold            # an index into choices, or the text of the right choice
    delimiter: " "              # put between context and each choice (lm-eval's target_delimiter)

  generation (greedy; reports acc = fraction the checker accepts):
    prompt_field: prompt        # default "prompt" (or a template, as above)
    reference_field: reference
    checker: exact              # exact: stripped completion == stripped reference
                                # number: last number in the completion == the reference number
                                #         (commas, "$" and a trailing "." ignored, as in GSM8K)
                                # regex: first match of `pattern` (its group 1 if it has one) == reference
    pattern: "Answer: (\\w+)"   # regex checker only
    stop: ["\n\n"]              # stop strings; default: a blank line
    max_new_tokens: 64
    chat: false                 # true: send the prompt as the user turn of the chat template

Every error names the file, the line and the field. `task(path)` turns the file into a `Task`, as the
built-in benchmarks are: multiple_choice is kind "choice" (acc judged), generation is kind "generate".
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path


from ..data import sources
from ..errors import UserError
from ..validate import load_mapping
from . import generation
from .summary import bar, summary
from .task import ChoiceItem, Settings, Task, choice_item, sample
from .tasks.gsm8k import FLEXIBLE, extract, normalize

COMMON = {"name", "type", "data", "id_field"}
MC_KEYS = COMMON | {"context_field", "template", "choices_field", "gold_field", "delimiter"}
GEN_KEYS = COMMON | {"prompt_field", "template", "reference_field", "checker", "pattern", "stop", "max_new_tokens", "chat"}
CHECKERS = ("exact", "number", "regex")


@dataclass(frozen=True)
class GenItem:
    id: str
    prompt: str
    reference: str


@dataclass
class CustomTask:
    name: str
    kind: str  # "multiple_choice" | "generation"
    source: str
    items: list  # ChoiceItem or GenItem
    checker: str = "exact"
    pattern: str | None = None
    stop: list[str] = field(default_factory=lambda: ["\n\n"])
    max_new_tokens: int = 64
    chat: bool = False

    def check(self, completion: str, reference: str) -> bool:
        """Does a completion count as correct under this task's checker?"""
        if self.checker == "exact":
            return completion.strip() == reference.strip()
        if self.checker == "number":
            got = normalize(extract(completion, FLEXIBLE, -1))
            try:
                return float(got) == float(normalize(reference.strip()))
            except ValueError:
                return False
        m = re.search(self.pattern, completion)
        if not m:
            return False
        got = m.group(1) if m.groups() else m.group(0)
        return got.strip() == reference.strip()


def is_custom(name: str) -> bool:
    return name.endswith((".yaml", ".yml"))


def _text(row: dict, spec: dict, key: str, default: str, where: str) -> str:
    """A string from a field, or from spec['template'] filled with the row's fields."""
    if "template" in spec:
        try:
            return str(spec["template"]).format(**row)
        except KeyError as e:
            raise UserError(f"{where}: template needs field {e} which this line lacks") from None
    name = spec.get(key, default)
    return sources.field(row, name, where)


def load(path_str: str) -> CustomTask:
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: custom task file does not exist")
    spec, _ = load_mapping(path, "expected a mapping of keys (type, data, ...)")  # exponent numbers, line:col errors
    kind = spec.get("type")
    if kind not in ("multiple_choice", "generation"):
        raise UserError(f"{path}: field 'type' must be multiple_choice or generation, got {kind!r}")
    unknown = set(spec) - (MC_KEYS if kind == "multiple_choice" else GEN_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown field(s) {', '.join(sorted(unknown))} for a {kind} task")
    if "data" not in spec:
        raise UserError(f"{path}: missing field 'data' (the JSONL file)")
    data = (path.parent / str(spec["data"])).resolve()
    if not data.is_file():
        raise UserError(f"{path}: field 'data': {data} does not exist")
    rows = sources.read_jsonl(data)
    if not rows:
        raise UserError(f"{data}: no items")
    task = CustomTask(str(spec.get("name", path.stem)), kind, f"custom task {path} over {data}", [])
    id_field = spec.get("id_field")
    ids = set()
    for n, row in enumerate(rows, 1):
        where = f"{data}:{n}"
        id_ = str(row[id_field]) if id_field and id_field in row else str(n)
        if id_field and id_field not in row:
            raise UserError(f"{where}: missing field '{id_field}'")
        if id_ in ids:
            raise UserError(f"{where}: duplicate id '{id_}'")
        ids.add(id_)
        if kind == "multiple_choice":
            task.items.append(_choice(row, spec, id_, where))
        else:
            ref = sources.field(row, spec.get("reference_field", "reference"), where)
            task.items.append(GenItem(id_, _text(row, spec, "prompt_field", "prompt", where), ref))
    if kind == "generation":
        _generation_settings(task, spec, path)
    return task


def _choice(row: dict, spec: dict, id_: str, where: str) -> ChoiceItem:
    context = _text(row, spec, "context_field", "context", where)
    name = spec.get("choices_field", "choices")
    choices = row.get(name)
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise UserError(f"{where}: field '{name}' must be a list of at least two strings")
    gname = spec.get("gold_field", "gold")
    if gname not in row:
        raise UserError(f"{where}: missing field '{gname}'")
    gold = row[gname]
    if isinstance(gold, str) and gold in choices:
        gold = choices.index(gold)
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise UserError(f"{where}: field '{gname}' must be an index into the {len(choices)} choices or one of their texts, got {row[gname]!r}")
    if not context:
        raise UserError(f"{where}: empty context")
    return choice_item(id_, context, choices, gold, str(spec.get("delimiter", " ")))


def _generation_settings(task: CustomTask, spec: dict, path: Path) -> None:
    task.checker = str(spec.get("checker", "exact"))
    if task.checker not in CHECKERS:
        raise UserError(f"{path}: field 'checker' must be one of {', '.join(CHECKERS)}, got {task.checker!r}")
    if task.checker == "regex":
        if "pattern" not in spec:
            raise UserError(f"{path}: checker 'regex' needs field 'pattern'")
        try:
            re.compile(str(spec["pattern"]))
        except re.error as e:
            raise UserError(f"{path}: field 'pattern' is not a valid regex ({e})") from None
        task.pattern = str(spec["pattern"])
    stop = spec.get("stop", ["\n\n"])
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise UserError(f"{path}: field 'stop' must be a string or a list of strings")
    task.stop = stop
    n = spec.get("max_new_tokens", 64)
    if not isinstance(n, int) or n < 1:
        raise UserError(f"{path}: field 'max_new_tokens' must be a positive integer, got {n!r}")
    task.max_new_tokens = n
    task.chat = bool(spec.get("chat", False))


def task(path_str: str) -> Task:
    """The custom task file as a `Task` (role "custom": neither forgetting nor learning)."""
    spec = load(path_str)
    if spec.kind == "multiple_choice":
        return Task(spec.name, "choice", spec.source, ("acc", "acc_norm"), "acc", role="custom", load=lambda: spec.items,
                    config={"output_type": "multiple_choice", "file": path_str})

    def run(model, tok, t: Task, settings: Settings) -> dict:
        return _run_generation(model, tok, spec, settings)

    return Task(spec.name, "generate", spec.source, ("acc",), "acc", role="custom", run=run,
                config={"output_type": "generate_until", "file": path_str, "checker": spec.checker, "until": spec.stop,
                        "max_gen_toks": spec.max_new_tokens, "chat": spec.chat})


def _run_generation(model, tok, spec: CustomTask, settings: Settings) -> dict:
    items = sample(spec.items, settings.generation_limit, settings.seed, spec.name)
    prompts = [tok.apply_chat_template([{"role": "user", "content": it.prompt}], tokenize=False, add_generation_prompt=True)
               if spec.chat else it.prompt for it in items]
    t0 = time.perf_counter()
    with bar(spec.name, len(items), settings.show_progress) as b:
        completions = generation.generate(model, tok, prompts, spec.stop, spec.max_new_tokens, settings.batch_size, progress=b.update)
    seconds = time.perf_counter() - t0
    passed = [float(spec.check(c, it.reference)) for it, c in zip(items, completions)]
    samples = [{"doc_id": it.id, "prompt": p, "completion": c, "gold": it.reference, "pass": bool(ok)}
               for it, p, c, ok in zip(items, prompts, completions, passed)]
    return summary(spec.name, {"acc": passed}, "acc", None, [it.id for it in items], samples, spec.source, seconds)
