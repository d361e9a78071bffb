"""Parity and speed against lm-evaluation-harness 0.4.13 on the same items, same prompts, same machine.

    nice -n 10 .venv/bin/python benchmarks/parity_lmeval.py            # 200 items x 3 tasks, gsm8k 50 (both modes)
    nice -n 10 .venv/bin/python benchmarks/parity_lmeval.py --limit 20 --gsm8k-limit 4   # quick check

How the items are made identical: our `--limit` sample (task.sample, seed 0) picks the item ids;
the raw rows of exactly those items are written to JSONL files, and lm-eval reads them through
task YAMLs that are copies of its own (hellaswag.yaml + utils.py, arc_easy.yaml, winogrande default.yaml
+ preprocess_winogrande.py, gsm8k.yaml) with only `dataset_path: json` + `data_files` and the task
name changed. So lm-eval applies its own preprocessing; the script then checks that every request
(context, continuation) or generation prompt lm-eval built is byte-identical to ours.
For ARC-Challenge the rows are rebuilt from the request file (question = query minus "Question: "
and "\nAnswer:"), which also checks that reconstruction.
GSM8K 5-shot: lm-eval's gsm8k.yaml with `fewshot_config: {sampler: first_n}` over the GSM8K train
file, i.e. our fixed exemplars. GSM8K chat: lm-eval with apply_chat_template=True, num_fewshot=0.

lm-eval: HFLM(pretrained=<models.resolve(model)>, dtype --dtype (float32), batch size 8, cpu), one
simple_evaluate call per task, timed from the call to its return (model already loaded).
Both sides share this process, so with --malloc tuned (the default, what `learnforget eval` sets)
lm-eval gets the same malloc settings as ours.
Ours: runner.run_choice / tasks.gsm8k.run on an already-loaded model, timed the same way; the time to
load the full benchmark from the wheel is reported separately.
Results: benchmarks/results/parity-<date>.json and a printed table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from learnforget import models  # noqa: E402
from learnforget.cpu import allocator  # noqa: E402
from learnforget.data import sources  # noqa: E402
from learnforget.evaluate import runner, task, tasks  # noqa: E402
from learnforget.evaluate.task import Settings  # noqa: E402
from learnforget.evaluate.tasks import gsm8k, olmo  # noqa: E402

HERE = Path(__file__).resolve().parent
MC_TASKS = ["hellaswag", "arc_challenge", "winogrande"]


def lm_eval_tasks_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _json_source(yaml_text: str, old_path_line: str, files: dict[str, str]) -> str:
    """Point a task YAML at local JSONL files (and drop the hub-only keys)."""
    data = "dataset_path: json\ndataset_kwargs:\n  data_files:\n" + "".join(f"    {k}: {json.dumps(v)}\n" for k, v in files.items())
    assert old_path_line in yaml_text, old_path_line
    out = []
    for line in yaml_text.replace(old_path_line, data.rstrip("\n")).splitlines():
        if line.startswith(("dataset_name:", "training_split:", "tag:", "  - multiple_choice", "  - ai2_arc")):
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def write_task_files(tmp: Path, picked: dict[str, list[int]]) -> None:
    """JSONL rows of the picked items and lm-eval task YAMLs reading them (task names lf_<task>)."""
    src = lm_eval_tasks_dir()
    # HellaSwag: raw rows; lm-eval's own process_docs does the preprocessing.
    rows = olmo.hf_rows("hellaswag/none/validation")
    f = _jsonl(tmp / "hellaswag.jsonl", [rows[i] for i in picked["hellaswag"]])
    shutil.copy(src / "hellaswag" / "utils.py", tmp / "utils.py")
    text = (src / "hellaswag" / "hellaswag.yaml").read_text().replace("task: hellaswag", "task: lf_hellaswag")
    (tmp / "lf_hellaswag.yaml").write_text(_json_source(text, "dataset_path: Rowan/hellaswag", {"validation": f}))
    # WinoGrande: raw rows + lm-eval's preprocess functions.
    rows = olmo.hf_rows("winogrande/winogrande_xl/validation")
    f = _jsonl(tmp / "winogrande.jsonl", [rows[i] for i in picked["winogrande"]])
    shutil.copy(src / "winogrande" / "preprocess_winogrande.py", tmp / "preprocess_winogrande.py")
    text = (src / "winogrande" / "default.yaml").read_text().replace("task: winogrande", "task: lf_winogrande")
    (tmp / "lf_winogrande.yaml").write_text(_json_source(text, "dataset_path: allenai/winogrande", {"validation": f}))
    # ARC-Challenge test: rebuild hub-shaped rows from the request file's docs.
    docs = sources.request_docs("arc_challenge", "test_rc_5shot")
    arc_rows = []
    for i in picked["arc_challenge"]:
        d = docs[i]
        q = d["query"]
        assert q.startswith("Question: ") and q.endswith("\nAnswer:")
        labels = list("ABCDE")[:len(d["choices"])]
        arc_rows.append({"id": d["id"], "question": q[len("Question: "):-len("\nAnswer:")],
                         "choices": {"text": d["choices"], "label": labels}, "answerKey": labels[d["gold"]]})
    f = _jsonl(tmp / "arc_challenge.jsonl", arc_rows)
    text = (src / "arc" / "arc_easy.yaml").read_text().replace("task: arc_easy", "task: lf_arc_challenge")
    text = _json_source(text, "dataset_path: allenai/ai2_arc", {"test": f})
    text = text.replace("validation_split: validation\n", "")
    (tmp / "lf_arc_challenge.yaml").write_text(text)
    # GSM8K: the picked test rows; train = the first five train problems (our fixed exemplars), first_n sampler.
    test = gsm8k.load_problems("test")
    train = gsm8k.load_problems("train")[:gsm8k.N_SHOTS]
    ft = _jsonl(tmp / "gsm8k_test.jsonl", [{"question": test[i].question, "answer": test[i].answer} for i in picked["gsm8k"]])
    fs = _jsonl(tmp / "gsm8k_train.jsonl", [{"question": p.question, "answer": p.answer} for p in train])
    spec = yaml.safe_load((src / "gsm8k" / "gsm8k.yaml").read_text())
    for key in ("tag", "dataset_name"):
        spec.pop(key, None)
    spec.update({"dataset_path": "json", "dataset_kwargs": {"data_files": {"train": fs, "test": ft}}})
    (tmp / "lf_gsm8k_5shot.yaml").write_text(yaml.safe_dump({**spec, "task": "lf_gsm8k_5shot", "fewshot_config": {"sampler": "first_n"}}))
    chat = {**spec, "task": "lf_gsm8k_chat", "num_fewshot": 0}
    (tmp / "lf_gsm8k_chat.yaml").write_text(yaml.safe_dump(chat))


def pick(limit: int, gsm8k_limit: int, seed: int) -> tuple[dict[str, list[int]], dict[str, list]]:
    """Indices (into the full sets) and our items, from our seeded --limit sample."""
    idx, items = {}, {}
    for name in MC_TASKS:
        full = tasks.get(name).load()
        chosen = task.sample(list(range(len(full))), limit, seed, name)
        idx[name], items[name] = chosen, [full[i] for i in chosen]
        assert [it.id for it in items[name]] == [it.id for it in task.sample(full, limit, seed, name)]
    problems = gsm8k.load_problems("test")
    idx["gsm8k"] = task.sample(list(range(len(problems))), gsm8k_limit, seed, "gsm8k")
    items["gsm8k"] = [problems[i] for i in idx["gsm8k"]]
    return idx, items


def run_lm_eval(lm, task: str, tm, **kwargs) -> tuple[dict, list[dict], float, float]:
    """lm-eval's results and samples for one task, its wall time and this process's CPU time."""
    import lm_eval

    t0, c0 = time.perf_counter(), time.process_time()
    out = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=tm, log_samples=True, bootstrap_iters=0, **kwargs)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    return out["results"][task], samples, seconds, cpu


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def compare_mc(name: str, ours: dict, theirs: list[dict]) -> dict:
    """Per-item agreement of predictions and log-likelihoods, and whether the requests were identical."""
    ours_s = ours["samples"]
    assert len(ours_s) == len(theirs)
    same_req = same_acc = same_norm = same_pred = 0
    max_diff = 0.0
    acc_t, norm_t = [], []
    for o, t in zip(ours_s, theirs):
        t_args = [list(a) for a in t["arguments"]]
        same_req += t_args == o["arguments"]
        t_lls = [float(r[0]) for r in t["filtered_resps"]]
        max_diff = max(max_diff, max(abs(a - b) for a, b in zip(o["loglikelihoods"], t_lls)))
        t_pred = max(range(len(t_lls)), key=lambda i: t_lls[i])
        same_pred += t_pred == o["prediction"]
        same_acc += float(t["acc"]) == o["acc"]
        acc_t.append(float(t["acc"]))
        if "acc_norm" in t:
            same_norm += float(t["acc_norm"]) == o["acc_norm"]
            norm_t.append(float(t["acc_norm"]))
    n = len(ours_s)
    res = {"n": n, "identical_requests": same_req, "same_prediction": same_pred, "same_acc": same_acc,
           "max_abs_loglik_diff": max_diff,
           "ours": {"acc": ours["acc,none"], "acc_norm": ours.get("acc_norm,none")},
           "lm_eval": {"acc": sum(acc_t) / n, "acc_norm": sum(norm_t) / n if norm_t else None}}
    if norm_t:
        res["same_acc_norm"] = same_norm
    return res


def compare_gsm8k(ours: dict, theirs: list[dict]) -> dict:
    by_filter: dict[str, dict[int, dict]] = {}
    for s in theirs:
        by_filter.setdefault(s["filter"], {})[s["doc_id"]] = s
    n = len(ours["samples"])
    same_prompt = same_completion = 0
    same = {"strict-match": 0, "flexible-extract": 0}
    differing = []
    for i, o in enumerate(ours["samples"]):
        t = by_filter["strict-match"][i]
        same_prompt += t["arguments"][0][0] == o["prompt"]
        completion = t["resps"][0][0]
        same_completion += completion == o["completion"]
        ts, tf = by_filter["strict-match"][i]["filtered_resps"][0], by_filter["flexible-extract"][i]["filtered_resps"][0]
        same["strict-match"] += ts == o["strict"]
        same["flexible-extract"] += tf == o["flexible"]
        if ts != o["strict"] or tf != o["flexible"]:
            differing.append({"doc_id": o["doc_id"], "ours": [o["strict"], o["flexible"]], "lm_eval": [ts, tf],
                              "ours_completion": o["completion"][:400], "lm_eval_completion": completion[:400]})
    em = {f: sum(float(s["exact_match"]) for s in by_filter[f].values()) / n for f in same}
    return {"n": n, "identical_prompts": same_prompt, "identical_completions": same_completion,
            "same_extracted": same, "differing": differing,
            "ours": {"strict-match": ours["exact_match,strict-match"], "flexible-extract": ours["exact_match,flexible-extract"]},
            "lm_eval": em}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--gsm8k-limit", type=int, default=50)
    p.add_argument("--gsm8k-modes", default="5shot,chat", help="comma-separated subset of 5shot,chat; empty to skip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lm-eval-batch-size", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8, help="ours: items per batch (multiple choice)")
    p.add_argument("--gen-batch-size", type=int, default=8, help="both: sequences per generation batch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--malloc", default="tuned", choices=["tuned", "default"],
                   help="tuned: learnforget.allocator.tune(), as `learnforget eval` does; both sides share the process, so lm-eval gets it too")
    p.add_argument("--dtype", default="float32", choices=sorted(runner.DTYPES), help="both sides: weights and compute dtype")
    p.add_argument("--repeats", type=int, default=1, help="multiple choice: time each side this many times (alternating) and keep the fastest")
    p.add_argument("--out", default=str(HERE / "results" / f"parity-{date.today().isoformat()}.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    malloc_tuned = args.malloc == "tuned" and allocator.tune()

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    path = models.resolve(args.model)
    t0 = time.perf_counter()
    idx, items = pick(args.limit, args.gsm8k_limit, args.seed)
    load_seconds = time.perf_counter() - t0
    tmp = Path(tempfile.mkdtemp(prefix="lf-parity-"))
    write_task_files(tmp, idx)
    tm = TaskManager(include_path=str(tmp))
    lm = HFLM(pretrained=path, dtype=args.dtype, batch_size=args.lm_eval_batch_size, device="cpu")
    model, tok = models.load(args.model, dtype=runner.DTYPES[args.dtype])

    report: dict = {"command": " ".join(sys.argv), "machine_matmul_gflops": matmul_gflops(), "model": args.model, "model_path": path, "lm_eval_version": lm_eval.__version__, "torch_threads": torch.get_num_threads(), "dtype": args.dtype, "malloc_tuned": malloc_tuned,
                    "limit": args.limit, "seed": args.seed, "lm_eval_batch_size": args.lm_eval_batch_size, "our_batch_size": args.batch_size,
                    "our_sampling_and_loading_seconds": round(load_seconds, 2), "tasks": {}}
    for name in MC_TASKS:
        t = tasks.get(name)
        lm_times, our_times = [], []
        for rep in range(args.repeats):  # alternate the two, keep each one's fastest run: less noise from other load
            print(f"[parity] {name}: lm-eval (run {rep + 1}) ...", flush=True)
            _, theirs_rep, t_sec, t_cpu = run_lm_eval(lm, f"lf_{name}", tm)
            lm_times.append((t_sec, t_cpu))
            print(f"[parity] {name}: ours (run {rep + 1}) ...", flush=True)
            ours_rep, o_sec, o_cpu = timed(lambda: runner.run_choice(model, tok, name, items[name], t.metrics, t.primary,
                                                                     t.source, args.batch_size))
            our_times.append((o_sec, o_cpu))
            if rep == 0:
                theirs, ours = theirs_rep, ours_rep
        cmp = compare_mc(name, ours, theirs)
        (t_sec, t_cpu), (o_sec, o_cpu) = min(lm_times), min(our_times)
        cmp.update({"lm_eval_seconds": round(t_sec, 2), "our_seconds": round(o_sec, 2), "lm_eval_cpu_seconds": round(t_cpu, 2),
                    "our_cpu_seconds": round(o_cpu, 2), "all_runs_seconds": {"lm_eval": lm_times, "ours": our_times},
                    "lm_eval_items_per_s": round(cmp["n"] / t_sec, 3), "our_items_per_s": round(cmp["n"] / o_sec, 3)})
        cmp["speed_ratio"] = round(cmp["our_items_per_s"] / cmp["lm_eval_items_per_s"], 2)
        cmp["cpu_time_ratio"] = round(t_cpu / o_cpu, 2)
        report["tasks"][name] = cmp
        print(json.dumps({k: v for k, v in cmp.items()}, indent=None), flush=True)
    n = sum(report["tasks"][t]["n"] for t in MC_TASKS)
    t_l = sum(report["tasks"][t]["lm_eval_seconds"] for t in MC_TASKS)
    t_o = sum(report["tasks"][t]["our_seconds"] for t in MC_TASKS)
    c_l = sum(report["tasks"][t]["lm_eval_cpu_seconds"] for t in MC_TASKS)
    c_o = sum(report["tasks"][t]["our_cpu_seconds"] for t in MC_TASKS)
    report["forgetting_speed"] = {"items": n, "lm_eval_seconds": round(t_l, 2), "our_seconds": round(t_o, 2),
                                  "lm_eval_items_per_s": round(n / t_l, 3), "our_items_per_s": round(n / t_o, 3), "ratio": round(t_l / t_o, 2),
                                  "lm_eval_cpu_seconds": round(c_l, 2), "our_cpu_seconds": round(c_o, 2), "cpu_time_ratio": round(c_l / c_o, 2)}

    for mode in [m for m in args.gsm8k_modes.split(",") if m]:
        print(f"[parity] gsm8k {mode}: lm-eval ...", flush=True)
        kw = {"apply_chat_template": True} if mode == "chat" else {}
        lm.batch_size_per_gpu = args.gen_batch_size
        _, theirs, t_sec, t_cpu = run_lm_eval(lm, f"lf_gsm8k_{mode}", tm, **kw)
        print(f"[parity] gsm8k {mode}: ours ...", flush=True)
        ours, o_sec, o_cpu = timed(lambda: gsm8k.run(model, tok, tasks.get(f"gsm8k:{mode}"),
                                                       Settings(generation_limit=args.gsm8k_limit, seed=args.seed, batch_size=args.gen_batch_size)))
        assert [o["doc_id"] for o in ours["samples"]] == [p.id for p in items["gsm8k"]]
        cmp = compare_gsm8k(ours, theirs)
        cmp.update({"lm_eval_seconds": round(t_sec, 2), "our_seconds": round(o_sec, 2), "speed_ratio": round(t_sec / o_sec, 2),
                    "lm_eval_cpu_seconds": round(t_cpu, 2), "our_cpu_seconds": round(o_cpu, 2)})
        report["tasks"][f"gsm8k:{mode}"] = cmp
        print(json.dumps({k: v for k, v in cmp.items() if k != "differing"}), flush=True)
    lm.batch_size_per_gpu = args.lm_eval_batch_size

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)
    print_table(report)
    print(f"wrote {out}")
    return 0


def matmul_gflops() -> float:
    """fp32 GFLOP/s of a (1400x576)@(576x1536) matmul, SmolLM2's MLP shape: how fast the machine is right now."""
    a, b = torch.randn(1400, 576), torch.randn(576, 1536)
    a @ b
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    return round(2 * 1400 * 576 * 1536 * 10 / (time.perf_counter() - t0) / 1e9, 1)


def print_table(r: dict) -> None:
    print(f"\nparity vs lm-eval {r['lm_eval_version']} on {r['model']} ({r['limit']} items/task, seed {r['seed']}, "
          f"{r['torch_threads']} threads; lm-eval batch {r['lm_eval_batch_size']}, ours {r['our_batch_size']})")
    head = f"{'task':<16} {'metric':<10} {'lm-eval':>8} {'ours':>8} {'Δ pts':>6}  {'same/n':>8}  {'req same':>8}  {'max|Δll|':>9}  {'lm-eval it/s':>12} {'ours it/s':>9} {'ratio':>6}"
    print(head)
    print("-" * len(head))
    for name in MC_TASKS:
        c = r["tasks"][name]
        for m in ("acc", "acc_norm"):
            if c["lm_eval"].get(m) is None:
                continue
            same = c["same_acc"] if m == "acc" else c["same_acc_norm"]
            print(f"{name:<16} {m:<10} {c['lm_eval'][m]:>8.4f} {c['ours'][m]:>8.4f} {100 * (c['ours'][m] - c['lm_eval'][m]):>6.2f}  "
                  f"{same:>4}/{c['n']:<3}  {c['identical_requests']:>4}/{c['n']:<3}  {c['max_abs_loglik_diff']:>9.2e}  "
                  f"{c['lm_eval_items_per_s']:>12.2f} {c['our_items_per_s']:>9.2f} {c['speed_ratio']:>6.2f}")
    f = r["forgetting_speed"]
    print(f"{'3 tasks':<16} {'speed':<10} {'':>8} {'':>8} {'':>6}  {'':>8}  {'':>8}  {'':>9}  {f['lm_eval_items_per_s']:>12.2f} {f['our_items_per_s']:>9.2f} {f['ratio']:>6.2f}")
    print(f"CPU time (this process): lm-eval {f['lm_eval_cpu_seconds']:.0f}s, ours {f['our_cpu_seconds']:.0f}s, ratio {f['cpu_time_ratio']:.2f}; "
          f"matmul speed at start {r['machine_matmul_gflops']} GFLOP/s")
    for name, c in r["tasks"].items():
        if not name.startswith("gsm8k"):
            continue
        print(f"{name:<16} prompts identical {c['identical_prompts']}/{c['n']}, completions identical {c['identical_completions']}/{c['n']}, "
              f"same extracted: strict {c['same_extracted']['strict-match']}/{c['n']}, flexible {c['same_extracted']['flexible-extract']}/{c['n']}; "
              f"EM strict {c['lm_eval']['strict-match']:.3f} vs {c['ours']['strict-match']:.3f}, flexible {c['lm_eval']['flexible-extract']:.3f} vs "
              f"{c['ours']['flexible-extract']:.3f}; time {c['lm_eval_seconds']:.0f}s vs {c['our_seconds']:.0f}s ({c['speed_ratio']}x)")


if __name__ == "__main__":
    sys.exit(main())
