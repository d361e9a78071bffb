"""Typed, validated configuration: every spec of a run and of a study, with the defaults the verbs share.

A run is (model, data, method, train); a study adds experiments, evaluation, analysis and executor specs.
The CLI builds these from its options, the study from YAML (validate.build); both end here, so every
field carries its help text and type, and errors read the same: each spec's __post_init__ checks its
fields' types (validate.check_fields) and then its ranges.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, Optional, Union

from .errors import UserError
from .validate import build, check_fields

TARGET_PRESETS = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
    "all": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
RENAME = {"source": "data"}  # a CLI flag named unlike its field: DataSpec.source is `--data`
# Defaults shared by the study and the verbs (`learnforget eval`, `learnforget analyze`): one value each.
EVAL_SEED = 1234  # seed of the fixed item sample of every benchmark task
EVAL_BATCH = 16  # items per forward pass (multiple choice) / sequences per batch (generation)
SVD_METHOD = "gram"  # spectrum: eigenvalues of the Gram matrix (~2x faster than svdvals; rank@90% is unaffected)
DOMAINS = ("code", "math")  # an experiment's domain; its learning task is the task registry's (evaluate/tasks)
MARGINS = {"loss": 0.005, "kl": 0.002, "accuracy": 0.01}  # equivalence margins: differences smaller than these do not matter


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


# ----------------------------------------------------------------------------- a run


@dataclass
class DataSpec:
    source: str = _help("embedded name (python-code, math-text, math-train, gsm8k-train, mbpp-train), file, folder, glob or hub id")
    regime: Literal["cpt", "ift"] = _help("cpt: packed documents, loss on all tokens; ift: prompt/response, loss on the response only", default="cpt")
    seq_len: int = _help("tokens per training row", default=512)
    heldout_fraction: float = _help("fraction of documents held out (by id hash) for held-out loss", default=0.05)
    text_field: str = _help("JSONL/hub field with the document text (CPT)", default="text")
    prompt_field: str = _help("JSONL/hub field with the prompt (IFT)", default="prompt")
    response_field: str = _help("JSONL/hub field with the response (IFT)", default="response")
    streaming: Optional[bool] = _help("read the corpus as a stream (data.stream: memory independent of its size, a token "
                                      "budget) instead of whole into memory; null: stream local corpora over 1 GiB", default=None)
    chunk_chars: int = _help("CPT: cut each training document into pieces of about this many characters (at line ends) before "
                             "the seeded shuffle, so that even a short budget trains on many documents, not the first one or "
                             "two of the order (the demo: 4,096 tokens from one file whole, from ~30 in pieces); 0 = whole documents", default=0)
    heldout_docs: int = _help("held-out sets as documents drawn at random: this many held-out documents per set (seed heldout_seed), "
                              "a window of eval_tokens / heldout_docs tokens from each, so a set samples the domain at a flat cost; "
                              "0 = the first eval_tokens of held-out text in id order", default=0)
    heldout_selection: float = _help("with heldout_docs: the fraction of the target documents scored apart as the selection set "
                                     "('select'), which alone chooses learning rates and flags failed runs; the verdicts read the "
                                     "rest ('target'), so no verdict's data chose a learning rate", default=0.0)
    heldout_seed: int = _help("seed of the held-out documents drawn (heldout_docs): fixed per study, the same for every run", default=0)

    def __post_init__(self):
        check_fields(self, "data.")
        _need(self.seq_len >= 8, f"data.seq_len: must be at least 8, got {self.seq_len}")
        _need(0.0 <= self.heldout_fraction < 1.0, f"data.heldout_fraction: must be in [0, 1), got {self.heldout_fraction}")
        _need(self.chunk_chars >= 0, f"data.chunk_chars: an integer >= 0, got {self.chunk_chars}")
        _need(self.heldout_docs >= 0, f"data.heldout_docs: an integer >= 0, got {self.heldout_docs}")
        _need(0.0 <= self.heldout_selection < 1.0, f"data.heldout_selection: a fraction in [0, 1), got {self.heldout_selection}")
        _need(self.heldout_selection == 0 or self.heldout_docs >= 2,
              f"data.heldout_selection: needs heldout_docs >= 2 (documents to split), got {self.heldout_docs}")


@dataclass
class MethodConfig:
    method: Literal["full", "lora"] = _help("full: every weight trains; lora: low-rank adapters (PEFT), base frozen", default="full")
    rank: int = _help("LoRA rank r (the paper: 16, 64, 256)", default=16)
    alpha: Optional[float] = _help("LoRA alpha; default 2*rank, as in the paper", default=None)
    dropout: float = _help("LoRA dropout (the paper: 0.05)", default=0.05)
    targets: str = _help("attention (q,k,v,o) | mlp (gate,up,down) | all | comma list of module names", default="all")
    rslora: bool = _help("rank-stabilised scaling alpha/sqrt(r) instead of alpha/r", default=False)
    dora: bool = _help("weight-decomposed LoRA (DoRA); slower", default=False)
    init: Literal["default", "pissa"] = _help("default (B=0, A Kaiming) | pissa (principal singular vectors; changes the base)", default="default")
    loraplus_ratio: Optional[float] = _help("LoRA+: learning rate of B = ratio * lr (e.g. 16); None = off", default=None)
    attention_dropout: float = _help("full fine-tuning regularizer baseline: dropout on attention probabilities", default=0.0)

    def __post_init__(self):
        check_fields(self)
        if self.method == "lora":
            _need(self.rank >= 1, f"rank: must be >= 1, got {self.rank}")
            if self.alpha is None:
                self.alpha = 2.0 * self.rank
            _need(0.0 <= self.dropout < 1.0, f"dropout: must be in [0, 1), got {self.dropout}")

    def target_modules(self) -> list[str]:
        if self.targets in TARGET_PRESETS:
            return TARGET_PRESETS[self.targets]
        names = [t.strip() for t in self.targets.split(",") if t.strip()]
        _need(bool(names), "targets: empty module list")
        return names

    def label(self) -> str:
        if self.method == "full":
            return "full" + (f"-adrop{self.attention_dropout:g}" if self.attention_dropout else "")
        extras = [x for x, on in (("rslora", self.rslora), ("dora", self.dora), ("pissa", self.init == "pissa"), ("lora+", self.loraplus_ratio)) if on]
        return f"lora-r{self.rank}-{self.targets}" + "".join(f"-{x}" for x in extras)


@dataclass
class TrainConfig:
    lr: float = _help("peak learning rate (the paper: full 1e-5..5e-5, LoRA ~10x higher)", default=2e-5)
    tokens: Optional[int] = _help("token budget (CPT); checkpoints are token counts", default=None)
    epochs: Optional[float] = _help("epoch budget (IFT); checkpoints are epochs", default=None)
    checkpoints: list[float] = _help("budgets at which to save (tokens, or epochs when epochs is set); the last is the budget", default_factory=list)
    batch_tokens: int = _help("global batch in tokens (all processes, all accumulation steps)", default=4096)
    micro_batch: int = _help("rows per forward pass per process; lower saves memory (SmolLM2 full FT, 4 x 512 tokens a "
                             "step: 3.9 GB peak at 1 vs Trainer's one 4-row pass 6.7 GB, benchmarks/speed.py); raise it on GPUs", default=1)
    optimizer: Literal["adamw", "lion"] = _help("adamw | lion (the paper's LionW)", default="adamw")
    betas: tuple[float, float] = _help("optimizer betas (the paper: 0.9, 0.95)", default=(0.9, 0.95))
    weight_decay: float = _help("decoupled weight decay", default=0.0)
    warmup: float = _help("warm-up as a fraction of steps, then cosine decay to 0", default=0.1)
    grad_clip: float = _help("max global gradient norm; 0 = off", default=1.0)
    gradient_checkpointing: bool = _help("recompute activations in backward: less memory, ~30% slower", default=False)
    precision: Literal["auto", "fp32", "bf16"] = _help("auto (bf16 where the hardware has it natively, else fp32) | fp32 | bf16", default="auto")
    seed: int = _help("seed for init, data order and dropout: same seed, same run", default=0)
    eval_tokens: int = _help("held-out tokens scored at each checkpoint (0 = none)", default=16384)
    eval_batch: int = _help("rows per held-out forward pass", default=8)
    extra_eval: list[str] = _help("more held-out sets scored at each checkpoint (e.g. gsm8k-test)", default_factory=list)
    skip_base_eval: bool = _help("do not score the held-out sets at step 0 (a study scores the base model once, not per run)", default=False)
    kl_reference: Optional[str] = _help("folder with the base model's top-k next-token distributions per held-out set, for KL "
                                        "drift at each checkpoint (null: <out>/reference, made when step 0 scores the base model; "
                                        "a study makes one per experiment). A location, not part of the run's identity", default=None)
    log_every: int = _help("steps between metric log lines", default=1)
    processes: int = _help("training processes of this run (one per GPU; on CPU they share the cores). A study launches a run "
                           "with more than 1 through `accelerate launch` (learnforget.train.launch); `learnforget train` with more "
                           "than 1 must be started by such a launcher. The global batch is the same for any count", default=1)
    distributed: Literal["ddp", "fsdp"] = _help("how processes share the work: ddp (each holds the whole model) | fsdp (weights, "
                                                "gradients and optimizer state sharded over processes; consolidated checkpoints)", default="ddp")

    def __post_init__(self):
        check_fields(self)
        _need(self.processes >= 1, f"processes: an integer >= 1, got {self.processes}")
        _need((self.tokens is None) != (self.epochs is None), "give exactly one budget: --tokens (CPT) or --epochs (IFT)")
        _need(self.lr > 0, f"lr: must be > 0, got {self.lr}")
        budget = self.tokens if self.tokens is not None else self.epochs
        _need(budget > 0, f"budget must be > 0, got {budget}")
        self.checkpoints = sorted(float(c) for c in (self.checkpoints or [budget]))
        _need(self.checkpoints[-1] <= budget and self.checkpoints[0] > 0, f"checkpoints {self.checkpoints} must lie in (0, {budget}]")
        if self.checkpoints[-1] != budget:
            self.checkpoints.append(float(budget))
        _need(0.0 <= self.warmup < 1.0, f"warmup: a fraction in [0, 1), got {self.warmup}")


@dataclass
class RunConfig:
    model: str = _help("smollm2-135m | gemma3-270m | tiny-random-llama | local folder | hub id")
    data: DataSpec = _help("training data")
    method: MethodConfig = _help("full or LoRA")
    train: TrainConfig = _help("optimisation and budget")
    out: str = _help("run folder: checkpoints, metrics, run.json")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        return build(cls, d)


# ----------------------------------------------------------------------------- a study (study YAML)


@dataclass
class Experiment:
    name: str = _help("experiment name: a prefix of its run folders (e.g. code-cpt)")
    regime: Literal["cpt", "ift"] = _help("cpt: continued pre-training on documents; ift: instruction tuning on prompt/response pairs")
    domain: Literal["code", "math"] = _help("code | math: decides the learning task and the report's grouping")
    data: str = _help("training data: embedded name, file, folder, glob or hub id (as train --data)")
    tokens: Optional[int] = _help("token budget of every run (give tokens or epochs)", default=None)
    epochs: Optional[float] = _help("epoch budget of every run (IFT)", default=None)
    checkpoints: list[float] = _help("budgets at which each run saves a checkpoint; the last is the budget", default_factory=list)
    heldout_fraction: float = _help("fraction of documents held out for the held-out target loss", default=0.05)
    text_field: str = _help("JSONL/hub field with the document text (CPT)", default="text")
    prompt_field: str = _help("JSONL/hub field with the prompt (IFT)", default="prompt")
    response_field: str = _help("JSONL/hub field with the response (IFT)", default="response")
    tokens_per_epoch: Optional[int] = _help("for an epoch budget: the dataset's size in tokens, used only by --dry-run", default=None)
    streaming: Optional[bool] = _help("read the data as a stream (as data.streaming); null: stream local corpora over 1 GiB", default=None)
    chunk_chars: int = _help("cut training documents into pieces of about this many characters before the shuffle (as data.chunk_chars)", default=0)
    heldout_docs: int = _help("held-out documents drawn per set, a window of heldout_tokens / heldout_docs each (as data.heldout_docs); "
                              "0 = the first heldout_tokens of held-out text", default=0)
    heldout_selection: float = _help("fraction of the target held-out documents that only choose learning rates (as data.heldout_selection)", default=0.0)

    def __post_init__(self):
        check_fields(self, "experiment.")


@dataclass
class EvalSpec:
    forgetting: Optional[list[str]] = _help("forgetting tasks, scored for the base model and the chosen checkpoints "
                                            "(null: the paper's three, from the task registry)", default=None)
    learning: Optional[dict[str, list[str]]] = _help("per domain, the learning tasks (e.g. {code: [humaneval], math: []}; "
                                                     "null: each domain's learning task from the task registry)", default=None)
    limit: Optional[int] = _help("items per task: a seeded fixed sample shared by every checkpoint (null: all)", default=200)
    generation_limit: Optional[int] = _help("items for generation tasks (gsm8k, humaneval): they cost ~100x more", default=50)
    heldout_tokens: int = _help("held-out tokens per set (target, general) at every checkpoint; 0 = none", default=8192)
    general: Optional[str] = _help("held-out general text: the continuous forgetting signal (null: none)", default="general-text")
    tasks_at: Literal["final", "all"] = _help("which checkpoints get benchmark tasks (held-out losses: all)", default="final")
    tasks_runs: Literal["all", "best_lr"] = _help(
        "which runs get benchmark tasks. best_lr: per (experiment, method) only the best learning rate (study.gather.best_lr; "
        "before any task is scored that is the lowest final held-out target loss, averaged over seeds): a sweep's other "
        "learning rates keep their held-out losses, and the study saves most of its evaluation time", default="all")
    seed: int = _help("seed of each task's item sample", default=EVAL_SEED)
    batch_size: int = _help("items per forward pass / sequences per generation batch", default=EVAL_BATCH)
    margins: dict[str, float] = _help("equivalence margins: loss (nats/token), kl (nats/token), accuracy (fraction). A difference "
                                      "whose 95% interval lies inside +-margin is reported as equivalent", default_factory=lambda: dict(MARGINS))

    def __post_init__(self):
        check_fields(self, "eval.")
        unknown = sorted(set(self.margins) - set(MARGINS))
        _need(not unknown, f"eval.margins: unknown signal(s) {unknown}; known: {sorted(MARGINS)}")
        _need(all(v > 0 for v in self.margins.values()), f"eval.margins: every margin must be > 0, got {self.margins}")
        self.margins = {**MARGINS, **self.margins}


@dataclass
class DiversitySpec:
    task: Union[str, dict[str, Optional[str]], None] = _help("one task (humaneval | gsm8k) for every domain, or per domain "
                                                             "(a null value: none; null: each domain's learning task)", default=None)
    problems: int = _help("problems: a seeded fixed sample, shared by every model", default=20)
    samples: int = _help("samples per problem: pass@k for k in 1, n/2, n", default=8)
    temperature: float = _help("sampling temperature", default=0.8)
    top_p: float = _help("nucleus sampling threshold", default=0.95)
    seed: int = _help("seed of the problem sample and of the sampling", default=0)
    max_new_tokens: Optional[int] = _help("default: 512 humaneval, 256 gsm8k", default=None)
    batch_size: int = _help("sequences per batch; part of the cache key (sampled tokens depend on the batching)", default=8)
    runs: Literal["best_lr", "all"] = _help("best_lr: per experiment, the full and LoRA runs the report compares | all", default="best_lr")
    methods: Optional[list[str]] = _help("only these method labels (e.g. [full, lora-r16-all]): sampling is costly", default=None)
    base: bool = _help("also the base model (the reference the collapse is measured against)", default=True)

    def __post_init__(self):
        check_fields(self, "analysis.diversity.")
        if isinstance(self.task, str):
            self.task = {d: self.task for d in DOMAINS}
        _need(self.task is None or not set(self.task) - set(DOMAINS),
              f"analysis.diversity.task: a task name or a mapping {{code: ..., math: ...}}, got {self.task!r}")


@dataclass
class AnalysisSpec:
    spectrum: bool = _help("rank@90% of each run's weight update per module (LoRA: B·A·scale)", default=False)
    intruders: bool = _help("intruder dimensions (arXiv 2410.21228): top-k tuned directions far from all base ones", default=False)
    diversity: Union[DiversitySpec, bool, None] = _help("diversity of sampled solutions: true (defaults) or a mapping", default=None)
    checkpoints: Literal["final", "all"] = _help("which checkpoints get spectrum and intruders (diversity: final)", default="final")
    svd: Literal["gram", "svd"] = _help("gram (eigenvalues of the Gram matrix, ~2x faster; rank@90% is unaffected) | svd", default=SVD_METHOD)
    k: int = _help("intruders: top-k singular vectors of each tuned weight", default=10)
    eps: list[float] = _help("intruder thresholds in (0, 1]", default_factory=lambda: [0.5, 0.6, 0.7, 0.8, 0.9])

    def __post_init__(self):
        if isinstance(self.diversity, dict):
            self.diversity = build(DiversitySpec, self.diversity, path=("analysis", "diversity"))
        check_fields(self, "analysis.")
        if self.diversity is True:
            self.diversity = DiversitySpec()
        elif self.diversity is False:
            self.diversity = None
        _need(self.k >= 1, f"analysis.k: an integer >= 1, got {self.k!r}")
        _need(bool(self.eps) and all(0 < e <= 1 for e in self.eps), f"analysis.eps: a list of thresholds in (0, 1], got {self.eps!r}")


@dataclass
class ExecutorSpec:
    """The `executor:` mapping of a study YAML: what each run asks Ray for (ignored by --executor local)."""

    num_cpus: float = _help("CPU cores per training process: a run asks Ray for num_cpus x train.processes, on one node; "
                            "on CPU-only machines also torch's thread count in each process", default=1.0)
    num_gpus: float = _help("GPUs per training process: a run asks Ray for num_gpus x train.processes, on one node "
                            "(train.processes: 4 with num_gpus: 1 is a 4-GPU DDP/FSDP run)", default=0.0)
    memory_gb: Optional[float] = _help("RAM per training process (a run asks for memory_gb x train.processes), so Ray does not "
                                       "start more runs than fit (see the dry run's est. GB)", default=None)
    workers: int = _help("--executor local: runs trained at once, each in its own process with (cores / workers) torch threads. "
                         "Small CPU matmuls scale poorly over threads: on 2 cores two 1-thread runs train faster than one "
                         "2-thread run (benchmarks/speed.py measures it)", default=1)

    def __post_init__(self):
        check_fields(self, "executor.")
        _need(self.num_cpus > 0, f"executor.num_cpus: must be > 0, got {self.num_cpus}")
        _need(self.num_gpus >= 0, f"executor.num_gpus: must be >= 0, got {self.num_gpus}")
        _need(self.memory_gb is None or self.memory_gb > 0, f"executor.memory_gb: must be > 0, got {self.memory_gb}")
        _need(self.workers >= 1, f"executor.workers: an integer >= 1, got {self.workers}")


@dataclass
class ForecastSpec:
    """The `forecast:` mapping of a study YAML: each run forecast from its first checkpoints (learnforget advise's
    fits), scored against its later ones; the report shows predicted vs measured."""

    fraction: float = _help("fit each run on its checkpoints up to this fraction of its budget (whole steps, at least 4)", default=0.125)

    def __post_init__(self):
        check_fields(self, "forecast.")
        _need(0.0 < self.fraction < 1.0, f"forecast.fraction: a fraction in (0, 1), got {self.fraction}")


@dataclass
class SearchSpec:
    """The `search:` mapping of a study YAML: learning rates chosen apart from the verdicts."""

    seed: int = _help("the seed the learning-rate grids train with; it is not one of `seeds`, so no verdict run was a "
                      "candidate in the choice (no winner's curse)", default=0)

    def __post_init__(self):
        check_fields(self, "search.")


@dataclass
class Study:
    name: str = _help("study name: its folder under --out")
    model: str = _help("base model of every run (as train --model)")
    experiments: list[Experiment] = _help("experiments: data, regime, domain and budget")
    methods: list[dict] = _help("each a MethodConfig grid (list values expand) plus `lr: [..]` and optional train overrides")
    train: dict = _help("TrainConfig defaults for every run", default_factory=dict)
    eval: EvalSpec = _help("benchmark tasks and held-out losses", default_factory=EvalSpec)
    seeds: list[int] = _help("training seeds: every run of the grid once per seed; with `search`, each method at its chosen "
                             "learning rate once per seed (the verdict runs). A seed fixes the data order, so methods pair by seed", default_factory=lambda: [0])
    search: Optional[SearchSpec] = _help("optional: each methods entry's lr grid trains on search.seed alone, each method's rate is "
                                         "chosen on the selection held-out documents, then the chosen rate trains with every seed "
                                         "(null: the whole grid with every seed)", default=None)
    seq_len: int = _help("tokens per training row", default=512)
    executor: ExecutorSpec = _help("local workers, or resources per run for --executor ray", default_factory=ExecutorSpec)
    analysis: Optional[AnalysisSpec] = _help("optional: spectrum, intruders, diversity (study/analyse.py)", default=None)
    forecast: Optional[ForecastSpec] = _help("optional: forecasts of each run from its first checkpoints vs what it measured later", default=None)

    def __post_init__(self):
        check_fields(self)
        _need(len(set(self.seeds)) == len(self.seeds) and bool(self.seeds), f"seeds: distinct integers, at least one, got {self.seeds}")
        _need(self.search is None or self.search.seed not in self.seeds,
              f"search.seed: {self.search.seed if self.search else ''} is also in seeds {self.seeds}; the learning-rate search needs a seed of its own")


# ----------------------------------------------------------------------------- advise (learnforget advise)


@dataclass
class AdviseConfig:
    """`learnforget advise`: the signature is the CLI (cli.py builds its options from these fields)."""

    data: Optional[str] = _help("training data (as train --data); needed unless --backtest", default=None)
    budget_tokens: Optional[int] = _help("the token budget to forecast at; needed unless --backtest", default=None)
    model: str = _help("base model (as train --model)", default="smollm2-135m")
    regime: Literal["cpt", "ift"] = _help("cpt: documents, loss on all tokens | ift: prompt/response, loss on the response", default="cpt")
    domain: Optional[Literal["code", "math"]] = _help("the report's grouping (null: math for data named math/gsm, else code)", default=None)
    methods: list[str] = _help("methods to forecast: full | lora-r<rank>[-attention|-mlp|-all] (all layers by default)",
                               default_factory=lambda: ["full", "lora-r16"])
    pilot_fraction: float = _help("the pilots train this fraction of the budget (at least 4 steps); the forecast extrapolates the rest", default=0.125)
    full_lr: float = _help("prior learning rate of full fine-tuning (the bracket's centre)", default=2e-5)
    lora_lr_ratio: float = _help("LoRA's prior learning rate over full fine-tuning's (LoRA Without Regret: about 10)", default=10.0)
    bracket: int = _help("learning rates tried per bracket (successive halving keeps one at the rung); 1 = the prior only", default=3)
    bracket_factor: float = _help("ratio between neighbouring learning rates of a bracket", default=2.0)
    alpha: float = _help("LoRA alpha of every rank (fixed, 1/r scaling: the best lr is about rank-independent)", default=32.0)
    seeds: list[int] = _help("training seeds: a second seed widens the intervals by the seed-to-seed spread", default_factory=lambda: [0])
    seq_len: int = _help("tokens per training row", default=256)
    batch_tokens: int = _help("tokens per optimizer step (small: a pilot of a few thousand tokens is then past Adam's first ~20 steps, whose curve is not the rest's)", default=512)
    micro_batch: int = _help("rows per forward pass", default=2)
    warmup: float = _help("warm-up fraction of the budget's steps, then cosine decay to 0", default=0.1)
    heldout_tokens: int = _help("held-out tokens per set (target, general) at every checkpoint", default=2048)
    general: str = _help("held-out general text: the forgetting signals (general-text loss, KL drift from the base)", default="general-text")
    hardware: Literal["here", "h100", "h200"] = _help("where the recommendation's cost is counted: this machine (measured) or a GPU (FLOPs at "
                                                      "a stated utilisation); the page shows all", default="here")
    workers: int = _help("pilots trained at once, each with cores / workers threads", default=2)
    backtest: Optional[str] = _help("a study folder: fit each run on its first --pilot-fraction of tokens and score the forecasts "
                                    "against its later checkpoints (trains nothing)", default=None)
    out: str = _help("advise folder: pilots, forecast.json, forecast.{md,html,png}", default="runs/advise")

    def __post_init__(self):
        check_fields(self)
        if self.backtest is None:
            _need(self.data is not None and self.budget_tokens is not None, "advise: give --data and --budget-tokens (or --backtest STUDY_DIR)")
            _need(self.budget_tokens > 0, f"budget_tokens: must be > 0, got {self.budget_tokens}")
        _need(0.0 < self.pilot_fraction < 1.0, f"pilot_fraction: a fraction in (0, 1), got {self.pilot_fraction}")
        _need(self.bracket >= 1 and self.bracket_factor > 1.0, "bracket: an integer >= 1 and bracket_factor > 1")
        _need(bool(self.methods), "methods: at least one method")
        _need(self.workers >= 1 and self.full_lr > 0 and self.lora_lr_ratio > 0, "workers >= 1, full_lr > 0 and lora_lr_ratio > 0")
