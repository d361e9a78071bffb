"""Typed, validated run configuration. Every field carries its help text; __post_init__ checks it.

A run is (model, data, method, train). The CLI builds these from its options, the study builds them
from YAML; both end here, so validation lives in one place and errors read the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .errors import UserError

TARGET_PRESETS = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
    "all": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass
class DataSpec:
    source: str = _help("embedded name (python-code, math-text, math-train, gsm8k-train, mbpp-train), file, folder, glob or hub id")
    regime: str = _help("cpt: packed documents, loss on all tokens; ift: prompt/response, loss on the response only", default="cpt")
    seq_len: int = _help("tokens per training row", default=512)
    heldout_fraction: float = _help("fraction of documents held out (by id hash) for held-out loss", default=0.05)
    text_field: str = _help("JSONL/hub field with the document text (CPT)", default="text")
    prompt_field: str = _help("JSONL/hub field with the prompt (IFT)", default="prompt")
    response_field: str = _help("JSONL/hub field with the response (IFT)", default="response")

    def __post_init__(self):
        if self.regime not in ("cpt", "ift"):
            raise UserError(f"data.regime: must be 'cpt' or 'ift', got '{self.regime}'")
        if self.seq_len < 8:
            raise UserError(f"data.seq_len: must be at least 8, got {self.seq_len}")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise UserError(f"data.heldout_fraction: must be in [0, 1), got {self.heldout_fraction}")


@dataclass
class MethodConfig:
    method: str = _help("full: every weight trains; lora: low-rank adapters (PEFT), base frozen", default="full")
    rank: int = _help("LoRA rank r (the paper: 16, 64, 256)", default=16)
    alpha: float | None = _help("LoRA alpha; default 2*rank, as in the paper", default=None)
    dropout: float = _help("LoRA dropout (the paper: 0.05)", default=0.05)
    targets: str = _help("attention (q,k,v,o) | mlp (gate,up,down) | all | comma list of module names", default="all")
    rslora: bool = _help("rank-stabilised scaling alpha/sqrt(r) instead of alpha/r", default=False)
    dora: bool = _help("weight-decomposed LoRA (DoRA); slower", default=False)
    init: str = _help("default (B=0, A Kaiming) | pissa (principal singular vectors; changes the base)", default="default")
    loraplus_ratio: float | None = _help("LoRA+: learning rate of B = ratio * lr (e.g. 16); None = off", default=None)
    attention_dropout: float = _help("full fine-tuning regularizer baseline: dropout on attention probabilities", default=0.0)

    def __post_init__(self):
        if self.method not in ("full", "lora"):
            raise UserError(f"method: must be 'full' or 'lora', got '{self.method}'")
        if self.method == "lora":
            if self.rank < 1:
                raise UserError(f"rank: must be >= 1, got {self.rank}")
            if self.alpha is None:
                self.alpha = 2.0 * self.rank
            if self.init not in ("default", "pissa"):
                raise UserError(f"init: must be 'default' or 'pissa', got '{self.init}'")
            if not 0.0 <= self.dropout < 1.0:
                raise UserError(f"dropout: must be in [0, 1), got {self.dropout}")

    def target_modules(self) -> list[str]:
        if self.targets in TARGET_PRESETS:
            return TARGET_PRESETS[self.targets]
        names = [t.strip() for t in self.targets.split(",") if t.strip()]
        if not names:
            raise UserError("targets: empty module list")
        return names

    def label(self) -> str:
        if self.method == "full":
            return "full" + (f"-adrop{self.attention_dropout:g}" if self.attention_dropout else "")
        extras = [x for x, on in (("rslora", self.rslora), ("dora", self.dora), ("pissa", self.init == "pissa"), ("lora+", self.loraplus_ratio)) if on]
        return f"lora-r{self.rank}-{self.targets}" + "".join(f"-{x}" for x in extras)


@dataclass
class TrainConfig:
    lr: float = _help("peak learning rate (the paper: full 1e-5..5e-5, LoRA ~10x higher)", default=2e-5)
    tokens: int | None = _help("token budget (CPT); checkpoints are token counts", default=None)
    epochs: float | None = _help("epoch budget (IFT); checkpoints are epochs", default=None)
    checkpoints: list[float] = _help("budgets at which to save (tokens, or epochs when epochs is set); the last is the budget", default_factory=list)
    batch_tokens: int = _help("global batch in tokens (all processes, all accumulation steps)", default=4096)
    micro_batch: int = _help("rows per forward pass per process; lower saves memory (SmolLM2 full FT, 4 x 512 tokens a "
                             "step: 3.9 GB peak at 1 vs Trainer's one 4-row pass 6.7 GB, benchmarks/speed.py); raise it on GPUs", default=1)
    optimizer: str = _help("adamw | lion (the paper's LionW)", default="adamw")
    betas: tuple[float, float] = _help("optimizer betas (the paper: 0.9, 0.95)", default=(0.9, 0.95))
    weight_decay: float = _help("decoupled weight decay", default=0.0)
    warmup: float = _help("warm-up as a fraction of steps, then cosine decay to 0", default=0.1)
    grad_clip: float = _help("max global gradient norm; 0 = off", default=1.0)
    gradient_checkpointing: bool = _help("recompute activations in backward: less memory, ~30% slower", default=False)
    precision: str = _help("auto (bf16 where the hardware has it natively, else fp32) | fp32 | bf16", default="auto")
    seed: int = _help("seed for init, data order and dropout: same seed, same run", default=0)
    eval_tokens: int = _help("held-out tokens scored at each checkpoint (0 = none)", default=16384)
    eval_batch: int = _help("rows per held-out forward pass", default=8)
    extra_eval: list[str] = _help("more held-out sets scored at each checkpoint (e.g. gsm8k-test)", default_factory=list)
    skip_base_eval: bool = _help("do not score the held-out sets at step 0 (a study scores the base model once, not per run)", default=False)
    log_every: int = _help("steps between metric log lines", default=1)

    def __post_init__(self):
        if (self.tokens is None) == (self.epochs is None):
            raise UserError("give exactly one budget: --tokens (CPT) or --epochs (IFT)")
        if self.optimizer not in ("adamw", "lion"):
            raise UserError(f"optimizer: must be 'adamw' or 'lion', got '{self.optimizer}'")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise UserError(f"precision: must be auto, fp32 or bf16, got '{self.precision}'")
        if self.lr <= 0:
            raise UserError(f"lr: must be > 0, got {self.lr}")
        budget = self.tokens if self.tokens is not None else self.epochs
        if budget <= 0:
            raise UserError(f"budget must be > 0, got {budget}")
        self.checkpoints = sorted(float(c) for c in (self.checkpoints or [budget]))
        if self.checkpoints[-1] > budget or self.checkpoints[0] <= 0:
            raise UserError(f"checkpoints {self.checkpoints} must lie in (0, {budget}]")
        if self.checkpoints[-1] != budget:
            self.checkpoints.append(float(budget))
        if not 0.0 <= self.warmup < 1.0:
            raise UserError(f"warmup: a fraction in [0, 1), got {self.warmup}")


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
        def build(kind, value):
            known = {f.name for f in fields(kind)}
            unknown = set(value) - known
            if unknown:
                raise UserError(f"{kind.__name__}: unknown field(s) {sorted(unknown)}")
            return kind(**value)

        train = dict(d["train"])
        if "betas" in train:
            train["betas"] = tuple(train["betas"])
        return cls(model=d["model"], data=build(DataSpec, d["data"]), method=build(MethodConfig, d["method"]),
                   train=build(TrainConfig, train), out=d["out"])
