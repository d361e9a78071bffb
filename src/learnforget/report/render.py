"""The report's pages: blocks (headings, paragraphs, lists, tables, figures) rendered to HTML and Markdown."""

from __future__ import annotations

import base64
import html

import numpy as np

from .. import stats
from .context import Analysis
from .answer import answer
from .figures import spectrum_series, type_key
from .findings import CLAIMS, RULES, Finding

VERDICT_CLASS = {stats.REPRODUCED: "yes", stats.NOT_REPRODUCED: "no", stats.EQUIVALENT: "eq", stats.NOT_SIGNIFICANT: "ns",
                 stats.NOT_RUN: "nr", stats.ONE_RUN: "nr"}
CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}"
       "th{background:#f2f2f2}img{max-width:100%}figure{margin:1em 0}figcaption{color:#555;font-size:13px}"
       ".yes{background:#d9f2d9;font-weight:bold}.no{background:#f8d7d7;font-weight:bold}.eq{background:#dde8f8;font-weight:bold}"
       ".ns{background:#eee}.nr{color:#888}")


def ci(v) -> str:
    return "–" if not v else f"{v[0]:.4f} [{v[1]:.4f}, {v[2]:.4f}]"


def _count(xs) -> list[tuple[str, int]]:
    xs = list(xs)
    return [(v, xs.count(v)) for v in dict.fromkeys(xs)]


def scale(A: Analysis) -> tuple[dict, str]:
    res = A.res
    toks = int(max(c["tokens"] for r in res["runs"] for c in r["checkpoints"]))
    forg = [t for t, v in A.tasks.items() if v.role == "forgetting"]
    items = {t: v.n for t, v in A.tasks.items()}
    mdd = min((A.tasks[t].mdd for t in A.above), default=None)
    units = {k: len(h["units"]["tokens"]) for k, h in res["base"]["heldout"].items()}
    info = {"runs": len(res["runs"]), "max_tokens_per_run": toks, "items_per_task": items, "signal_tasks": A.above,
            "forgetting_tasks": forg, "smallest_detectable_accuracy_difference": mdd, "heldout_units": units, "margins": A.margins}
    text = (f"This study trained {len(res['runs'])} runs for at most {toks:,} tokens each (the paper: up to 20 billion), scored "
            f"held-out text on {', '.join(f'{n} {k} documents' for k, n in units.items()) or 'no held-out documents'} and "
            f"{', '.join(f'{t} on {n} items' for t, n in items.items()) or 'no benchmark items'}. "
            f"{len(A.above)} of {len(forg)} forgetting tasks {'is' if len(A.above) == 1 else 'are'} clearly above chance for the base model"
            + (f" (accuracy differences below about {mdd:.2f} are undetectable at these item counts)" if mdd else "")
            + f". Equivalence margins: {A.margins['loss']:g} nats/token for losses, {A.margins['kl']:g} for KL, "
              f"{A.margins['accuracy']:g} for accuracies: a difference whose interval lies inside its margin is 'equivalent'.")
    return info, text


def _finding_cells(f: Finding) -> list:
    est = "–" if f.estimate is None else f"{f.estimate:+.4f}" + (f" [{f.ci[0]:+.4f}, {f.ci[1]:+.4f}]" if f.ci else "")
    stable = "–" if f.stable is None else "yes" if f.stable else "no"
    return [f"({f.claim})", f.family, f.group, f.comparison, f.signal, f.verdict, est, f"{f.seeds}", stable,
            f.numbers + (f" ({f.note})" if f.note else "")]


def _drift_table(A: Analysis) -> tuple:
    """Forgetting signals side by side: change from the base model with intervals, per best-lr method."""
    sigs = (["signal"] if A.above else []) + ["general", "kl_general", "kl_target"]
    rows = []
    for s in A.best:
        p, base = s.points[-1], A.base[s.group]
        cells = []
        for sig in sigs:
            a, b = A.signal(p, sig, s.domain), A.signal(base, sig, s.domain)
            if not (a and b):
                cells.append("–")
                continue
            d = stats.boot(a) - stats.boot(b)
            lo, hi = stats.interval(d)
            cells.append(f"{stats.value(a) - stats.value(b):+.4f} [{lo:+.4f}, {hi:+.4f}]")
        rows.append([s.group, s.who, f"{p.tokens:,}", *cells])
    names = {"signal": "forgetting-task accuracy change", "general": "general-text CE change", "kl_general": "KL, general text",
             "kl_target": "KL, target text"}
    return ("table", ["experiment", "method", "tokens", *(names[x] for x in sigs)], rows)


def _ce_fell_note(A: Analysis) -> list[tuple]:
    """When general-text CE fell for every method that learned while KL rose, CE cannot show forgetting here."""
    fell, rose = [], []
    for s in [s for s in A.best if s.learned]:
        p, base = s.points[-1], A.base[s.group]
        ce, b = A.signal(p, "general", s.domain), A.signal(base, "general", s.domain)
        kl = A.signal(p, "kl_general", s.domain)
        if ce and b:
            fell.append(stats.interval(stats.boot(b) - stats.boot(ce))[0] > 0)
        if kl:
            rose.append(stats.interval(stats.boot(kl))[0] > 0)
    if not (fell and all(fell) and rose and all(rose)):
        return []
    note = A.res["study"].get("model_note") or "the base model"
    return [("p", f"General-text cross-entropy fell below the base model's for every method that learned, while every one "
                  f"drifted from it (KL above 0). With a base that is {note}, any training first repairs some of the "
                  f"quantisation error, which lowers general-text loss and hides forgetting at small budgets: here KL "
                  f"drift, not the CE change, is the forgetting signal.")]


def _agreement(A: Analysis, found: list[Finding]) -> str:
    """Which forgetting signals agree on claim (b), per comparison."""
    by: dict = {}
    for f in found:
        if f.claim == "b" and f.verdict != stats.NOT_RUN and "matched" not in f.signal:
            by.setdefault((f.group, f.comparison), []).append(f"{f.signal.split(' (')[0]}: {f.verdict}")
    return " ".join(f"{g}, {c}: {'; '.join(v)}." for (g, c), v in by.items()) or "No forgetting comparison was decided."


def blocks(A: Analysis, found: list[Finding]) -> list[tuple]:
    st = A.res["study"]
    _, sentence = scale(A)
    verdicts = lambda c: ", ".join(f"{n} {v}" for v, n in _count(f.verdict for f in found if f.claim == c))  # noqa: E731
    order = sorted(found, key=lambda f: (f.family != "primary", f.claim))
    B = [("h1", f"learnforget study report: {st['name']}"), *answer(A, found),
         ("table", ["model", "model note", "created", "hardware"], [[st["model"], st["model_note"], st["created"], st["hardware"]]]),
         ("p", sentence), ("h2", "Findings"), ("ul", [f"({c}) {t}: {verdicts(c)}" for c, t in CLAIMS.items()]),
         ("table", ["claim", "family", "experiment", "comparison", "signal", "verdict", "estimate [95% CI]", "seeds",
                    "stable without any one seed", "numbers"],
          [_finding_cells(f) for f in order]),
         ("fig", "differences", "What the verdicts rest on: each method minus full fine-tuning at every checkpoint, on the same "
                                "seeds and documents. Dot: the mean difference; bar: its 95% interval, the one the verdicts use; "
                                "faint lines: one seed each; grey band: +-margin. A bar clear of 0 is a decided difference."),
         *_edge_note(A),
         ("p", "How the verdicts are computed (each method at its best learning rate, as recorded by the study: with a search, "
               "chosen on the search seed's runs by the selection documents, and the verdicts read other seeds and other "
               "documents; without one, the best final learning metric, ties and studies without a learning task: lowest "
               "held-out target (selection) loss). A difference on shared seeds has a random-effects t interval: the "
               "seed-to-seed spread of the paired difference (S - 1 degrees of freedom) plus how much the documents differ in "
               "it; other statistics resample seeds with t-calibrated weights and documents jointly. A row on fewer than 3 "
               "seeds is 'one run': an interval, not a verdict about the methods. Primary rows, (a) and (b): Holm per "
               "experiment; the rest: Benjamini-Hochberg; a row whose interval clears 0 but whose p-value misses its "
               "threshold is not significant:"),
         ("ul", [f"{k}: {v}" for k, v in RULES.items()]),
         ("h2", "Forgetting signals side by side (final checkpoint minus base model, 95% intervals)"), _drift_table(A),
         ("p", "Agreement of the forgetting signals on claim (b): " + _agreement(A, found)), *_ce_fell_note(A),
         ("h2", "Learning vs tokens"), ("fig", "learning", "Learning task metric and held-out target loss vs training tokens. Bands are each point's own "
                                  "interval, which includes how much documents differ; the findings pair systems on the same "
                                  "documents and are much tighter."),
         ("h2", "Forgetting vs tokens"),
         ("fig", "forgetting", "Forgetting score over the tasks where the base model is above chance, held-out general loss, "
                               "and KL drift from the base model on general text."),
         ("h2", "Learning-forgetting trade-off"),
         ("fig", "tradeoff", "Each method's checkpoints from the base model; dotted black: Pareto front over the runs that learned."),
         ("fig", "cost", "Learning vs training FLOPs, and vs trainable parameters at the final checkpoint (legend: peak memory)."),
         ("h2", "Learning-rate protocol"), ("fig", "lr_sensitivity", "Final learning metric vs learning rate per method (log x)."),
         ("table", ["experiment", "method", "lrs tried", "best lr", "learned?", "final learning metric", "final target loss"],
          [[s.group, s.label, _lrs_tried(A, s), f"{s.lr:g}" + (f" (the {s.edge} edge of the grid: the optimum was not bracketed)"
                                                                 if s.edge else ""),
            "yes" if s.learned else "no", ci(A.value(s.points[-1], "metric", s.domain)), ci(A.value(s.points[-1], "target", s.domain))]
           for s in A.best]), *_failed_blocks(A)]
    return B + _base_blocks(A) + _checkpoint_blocks(A) + _analysis_blocks(A) + _forecast_blocks(A)


def _edge_note(A: Analysis) -> list[tuple]:
    edges = [s for s in A.best if s.edge]
    if not edges:
        return []
    return [("p", "Best learning rate at the edge of its grid, so the optimum was not bracketed and the method may do better "
                  "at a learning rate not tried: " + "; ".join(f"{s.group} {s.label} at lr {s.lr:g} (the {s.edge} edge)" for s in edges)
             + ". The verdicts involving it compare that method at the best learning rate tried.")]


def _lrs_tried(A: Analysis, s) -> str:
    return ", ".join(f"{x.lr:g}" + (" (failed)" if x.failed else "") for x in A.series if x.group == s.group and x.label == s.label)


def _failed_blocks(A: Analysis) -> list[tuple]:
    """Failed runs, apart: they show a wrong learning rate, so no verdict and no best-lr choice rests on them."""
    bad = [s for s in A.series if s.failed]
    none_left = sorted({(s.group, s.label) for s in bad} - {(s.group, s.label) for s in A.best})
    out = [("h2", "Failed runs (kept out of every verdict and of the best-learning-rate choice)")]
    if not bad:
        return out + [("p", "None: every run ended with a held-out target loss below or within the interval of the base model's.")]
    out.append(("table", ["experiment", "method", "lr", "why"], [[s.group, s.label, f"{s.lr:g}", s.failed] for s in bad]))
    if none_left:
        out.append(("p", "Every learning rate failed for " + ", ".join(f"{g} {lab}" for g, lab in none_left)
                    + ": that method has no verdict; try lower learning rates."))
    return out


def _base_blocks(A: Analysis) -> list[tuple]:
    held = A.res["base"]["heldout"]
    return [("h2", "Base model: which tasks can carry a verdict"),
            ("table", ["task", "metric", "role", "n", "value [95% CI]", "chance", "vs chance", "verdict", "min. detectable difference"],
             [[t, v.metric, v.role, v.n, ci((v.value, v.lo, v.hi)), "–" if v.chance is None else f"{v.chance:.3f}", v.status,
               v.verdict, f"{v.mdd:.3f}"] for t, v in A.tasks.items()]),
            ("p", "Held-out losses of the base model (nats/token): " + (", ".join(
                f"{k} {h['loss']:.4f} ({h['tokens']:,} tokens, {len(h['units']['tokens'])} documents; a difference of "
                f"{stats.loss_detectable(h['units']['loss'], h['units']['tokens']):.4f} is detectable unpaired)"
                for k, h in held.items()) or "none recorded") + ".")]


def checkpoint_rows(A: Analysis) -> list[dict]:
    """Every run x checkpoint (plus the base model per experiment) with 95% intervals."""
    sigs = ("metric", "target", "general", "kl_general", "signal", "paper")
    rows = []
    for g in A.groups:
        d = g.split("/")[1]
        rows.append({"group": g, "label": "base", "lr": None, "best": None, "tokens": 0, "flops": 0.0,
                     **{k: A.value(A.base[g], k, d) for k in sigs}})
        for s in [s for s in A.series if s.group == g]:
            rows += [{"group": g, "label": s.label, "lr": s.lr, "best": s.best, "tokens": p.tokens, "flops": p.flops,
                      **{k: A.value(p, k, d) for k in sigs}} for p in s.points]
    return rows


def _checkpoint_blocks(A: Analysis) -> list[tuple]:
    return [("h2", "Every run and checkpoint (95% bootstrap intervals over items or documents)"),
            ("table", ["experiment", "method", "lr", "best lr?", "tokens", "FLOPs", "learning metric", "target loss", "general loss",
                       "KL general", "forgetting score", "paper 3-task"],
             [[r["group"], r["label"], "–" if r["lr"] is None else f"{r['lr']:g}", {True: "yes", False: "", None: ""}[r["best"]],
               f"{r['tokens']:,}", f"{r['flops']:.2e}", *(ci(r[k]) for k in ("metric", "target", "general", "kl_general", "signal", "paper"))]
              for r in checkpoint_rows(A)])]


def _run_names(A: Analysis) -> dict:
    """run id -> "label (lr x[, seed s])", so the analysis tables name runs as the rest of the report does."""
    runs = A.res["runs"]
    seeds = len({r["seed"] for r in runs}) > 1
    names = {r["id"]: f"{r['regime']}/{r['domain']} {r['label']} (lr {r['lr']:g}" + (f", seed {r['seed']})" if seeds else ")") for r in runs}
    return {**names, "base": "base model"}


def _spectrum_block(rows, name) -> list[tuple]:
    agg: dict = {}
    for r in rows:
        agg.setdefault((name.get(r["run_id"], r["run_id"]), r["tokens"], r["module_type"]), []).append((r["rank90"], r["full_rank"]))
    keys = sorted(agg, key=lambda k: (k[0], k[1], type_key(k[2])))
    return [("h2", "Spectrum of the weight updates"),
            ("p", "rank@90%: the number of singular directions holding 90% of the update's squared singular values "
                  "(ΔW = tuned - base; for LoRA ΔW = B·A·scale, so it cannot exceed the LoRA rank). Median over layers."),
            ("table", ["run", "tokens", "module", "median rank@90%", "full rank", "fraction of full rank"],
             [[k[0], f"{k[1]:,}", k[2], f"{np.median([x[0] for x in agg[k]]):.0f}", f"{np.median([x[1] for x in agg[k]]):.0f}",
               f"{np.median([x[0] / x[1] for x in agg[k]]):.3f}"] for k in keys])]


def _analysis_blocks(A: Analysis) -> list[tuple]:
    an, B, name = A.res.get("analysis") or {}, [], _run_names(A)
    if an.get("spectrum"):
        B += _spectrum_block(an["spectrum"], name)
        if spectrum_series(A):
            B.append(("fig", "spectrum", "Median rank@90% of ΔW over layers per module type (whiskers: min-max over layers), "
                                         "full fine-tuning and LoRA at their best learning rates; dashed: the LoRA ranks."))
    if an.get("intruders"):
        eps = sorted({float(r["eps"]) for r in an["intruders"]})
        piv: dict = {}
        for r in an["intruders"]:
            piv.setdefault((name.get(r["run_id"], r["run_id"]), r["tokens"], r["k"], r.get("directions")), {})[float(r["eps"])] = r["count"]
        B += [("h2", "Intruder dimensions"),
              ("p", "Among the top-k singular directions of each tuned weight, the number whose largest |cosine| with any "
                    "singular direction of the base weight is below eps (arXiv 2410.21228), summed over the weights."),
              ("table", ["run", "tokens", "k", "directions checked"] + [f"eps {e:g}" for e in eps],
               [[k[0], f"{k[1]:,}", k[2], "–" if k[3] is None else k[3]] + [piv[k].get(e, "–") for e in eps] for k in sorted(piv)])]
    if an.get("diversity"):
        B += [("h2", "Diversity of sampled solutions"),
              ("p", "Per problem, means over problems: n samples, correct ones, distinct ones and distinct correct ones "
                    "(HumanEval: distinct after normalising the code's syntax tree; GSM8K: distinct reasoning text), unbiased pass@k."),
              ("table", ["run", "tokens", "task", "n", "correct", "distinct", "distinct correct [95% CI]", "pass@k"],
               [[name.get(r["run_id"], r["run_id"]), f"{r['tokens']:,}", r["task"], r["n"],
                 "–" if r.get("correct") is None else f"{r['correct']:.2f}", f"{r['distinct']:.2f}",
                 f"{r['distinct_correct']:.2f}" + (f" [{r['distinct_correct_ci'][0]:.2f}, {r['distinct_correct_ci'][1]:.2f}]"
                                                   if r.get("distinct_correct_ci") else ""),
                 ", ".join(f"@{k} {v:.2f}" for k, v in r["pass_at_k"].items())] for r in an["diversity"]])]
    return B


SIGNAL_NAMES = {"target_loss": "held-out target loss", "kl": "KL drift (general text)", "general_loss": "general-text loss"}


def _forecast_blocks(A: Analysis) -> list[tuple]:
    """The study's `forecast:` block: each run forecast from its first checkpoints (learnforget advise's fit) vs measured."""
    fc = A.res.get("forecast")
    if not fc:
        return []
    rows = []
    for s in fc["summary"]:
        head = [s["run"], f"{s['lr']:g}", s["seed"], SIGNAL_NAMES.get(s["signal"], s["signal"])]
        if "mae" not in s:
            rows.append(head + ["–", "–", "–", f"no forecast: {s.get('reason', '')}"])
            continue
        rows.append(head + [s["checkpoints"], f"{s['mae']:.4g}", f"{s['coverage']:.0%}",
                            f"{s['last_error']:+.4g} at {s['last_tokens']:,.0f} tokens ({'inside' if s['last_covered'] else 'outside'} its 90% interval)"])
    return [("h2", f"Forecasts from each run's first {fc['fraction']:g} of its budget vs measured"),
            ("p", "Each run's held-out curves fitted on its checkpoints up to that fraction (learnforget advise's fit: power laws "
                  "in the learning-rate area and in tokens, mixed; forgetting linked to learning past the fitted part) and "
                  "extrapolated to its later checkpoints: mean absolute error and the share of those checkpoints inside the "
                  "90% prediction interval."),
            ("table", ["run", "lr", "seed", "signal", "later checkpoints", "mean abs. error", "coverage", "at the last checkpoint"], rows)]


def to_html(B: list[tuple], pngs: dict, extra_css: str = "") -> str:
    """The blocks as one HTML page, figures embedded; also the advise page's writer (its bold recommendation,
    small-print notes and commands)."""
    e, out = (lambda x: html.escape(str(x), quote=False)), []
    for b in B:
        if b[0] in ("h1", "h2"):
            out.append(f"<{b[0]}>{e(b[1])}</{b[0]}>")
        elif b[0] == "p":
            out.append(f"<p>{e(b[1])}</p>")
        elif b[0] == "bold":
            out.append(f'<p class="rec"><strong>{e(b[1])}</strong></p>')
        elif b[0] == "note":
            out.append(f"<p><small>{e(b[1])}</small></p>")
        elif b[0] == "code":
            out.append(f"<pre><code>{e(b[1])}</code></pre>")
        elif b[0] == "ul":
            out.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in b[1]) + "</ul>")
        elif b[0] == "fig":
            out.append(f'<figure><img alt="{html.escape(b[2])}" src="data:image/png;base64,{base64.b64encode(pngs[b[1]]).decode()}">'
                       f"<figcaption>{e(b[2])}</figcaption></figure>")
        else:
            cell = lambda c: f'<td class="{VERDICT_CLASS[c]}">{e(c)}</td>' if c in VERDICT_CLASS else f"<td>{e(c)}</td>"  # noqa: E731
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in b[1]) + "</tr>"
                       + "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in b[2]) + "</table>")
    return f'<!doctype html><html><head><meta charset="utf-8"><title>{e(B[0][1])}</title><style>{CSS}{extra_css}</style></head><body>\n' \
           + "\n".join(out) + "\n</body></html>\n"


def to_markdown(B: list[tuple]) -> str:
    out = []
    for b in B:
        if b[0] in ("h1", "h2"):
            out.append("#" * int(b[0][1]) + " " + b[1])
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "bold":  # the advise page's recommendation
            out.append(f"**{b[1]}**")
        elif b[0] == "note":
            out.append("---\n\n" + b[1])
        elif b[0] == "code":
            out.append(f"```\n{b[1]}\n```")
        elif b[0] == "ul":
            out.append("\n".join("- " + x for x in b[1]))
        elif b[0] == "fig":
            out.append(f"![{b[2]}]({b[1]}.png)\n\n*{b[2]}*")
        else:
            c = lambda x: str(x).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            out.append("\n".join(["| " + " | ".join(map(c, b[1])) + " |", "|" + "---|" * len(b[1])]
                                 + ["| " + " | ".join(map(c, row)) + " |" for row in b[2]]))
    return "\n\n".join(out) + "\n"
