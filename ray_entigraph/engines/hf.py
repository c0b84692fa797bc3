"""Hugging Face loading: the one home of `from_pretrained` for tokenizers and causal LMs, device and dtype
choice, and the transformers version differences the engines and evaluation share.

Stages, training, evaluation and the engines load through here, so that a model name means the same thing
everywhere (`bundled:...` is converted once by `engines.bundled`, a hub id or folder is passed through).
torch and transformers are imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

# Config dtype names that map to a torch dtype; anything else ("auto") lets from_pretrained use the checkpoint's.
DTYPES = ("bfloat16", "float16", "float32")


def pick_device(device: str) -> str:
    """`auto` is CUDA when present, else CPU; any other name (`cpu`, `cuda`, `cuda:N`) is kept."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def torch_dtype(name: str):
    """The torch dtype named by a config's dtype; "auto" (or another name) gives "auto" for `from_pretrained`."""
    if name not in DTYPES:
        return "auto"
    import torch

    return getattr(torch, name)


def cache_argument(model) -> str:
    """transformers renamed `past_key_values` to `cache` (5.2x); use whichever this version's model takes."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def load_tokenizer(model_name: str, cache_dir: str | None = None):
    """The tokenizer of a Hugging Face id, a local folder or `bundled:...` (converted on first use)."""
    from transformers import AutoTokenizer

    from ray_entigraph.engines.bundled import resolve_model_path  # lazy: pulls in storage (pyarrow, fsspec)

    return AutoTokenizer.from_pretrained(resolve_model_path(model_name, cache_dir))


def token_offsets(tokenizer):
    """text -> each token's (start, end) characters: a fast tokenizer's offsets; for a slow tokenizer (none),
    the text's words (`text/chunk.py` checks every chunk's real count)."""
    from ray_entigraph.text.chunk import word_offsets

    if not getattr(tokenizer, "is_fast", False):
        return word_offsets

    def offsets(text: str) -> list[tuple[int, int]]:
        return [tuple(o) for o in tokenizer(text, add_special_tokens=False,
                                            return_offsets_mapping=True)["offset_mapping"]]

    offsets.exact = True  # type: ignore[attr-defined]  # one span per token: len() is the text's count
    return offsets


def document_tokenizer_name(config) -> str:
    """The tokenizer that counts and chunks the documents (`config` is an EntiGraphConfig): the hosted
    engine's `engine.openai.tokenizer` when one is named (an API model has no Hugging Face tokenizer), else
    model.name."""
    if config.engine.kind == "openai" and config.engine.openai.tokenizer:
        return config.engine.openai.tokenizer
    return config.model.name


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The prompt text for chat messages: the tokenizer's chat template, or, for a model without one (a base
    model such as Llama 3 8B), the messages as plain few-shot text: each message's content in order, separated
    by blank lines, ending where the next answer starts, after the tokenizer's BOS token where it has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return (getattr(tokenizer, "bos_token", None) or "") + "\n\n".join(m["content"].strip() for m in messages) + "\n"


def quiet_progress_bars() -> None:
    """No download or weight-loading progress bars: in actor and task logs they are a flood of lines."""
    import transformers

    transformers.utils.logging.disable_progress_bar()


def output_penalties(prompt_width: int, repetition: float, frequency: float, presence: float):
    """Logits processors that penalise only the tokens generated after the first `prompt_width` positions:
    transformers' repetition penalty (its `prompt_ignore_length`) and OpenAI-style frequency and presence
    penalties (logit - frequency * count - presence * [count > 0]), as vLLM and HTTP servers apply them."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    class OutputCountPenalty(LogitsProcessor):
        def __call__(self, input_ids, scores):
            generated = input_ids[:, prompt_width:]
            if generated.shape[1] == 0:
                return scores
            counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
            return scores - frequency * counts - presence * (counts > 0).to(scores.dtype)

    processors = LogitsProcessorList()
    if repetition != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(repetition, prompt_ignore_length=prompt_width))
    if frequency or presence:
        processors.append(OutputCountPenalty())
    return processors


def has_grammar_library() -> bool:
    """Whether xgrammar (installed with vLLM's CPU build) is there to constrain transformers' decoding."""
    import importlib.util

    return importlib.util.find_spec("xgrammar") is not None


def json_schema_compiler(tokenizer, vocab_size: int):
    """A function from a JSON schema (as a string) to a fresh logits processor that lets transformers generate
    only text matching the schema (xgrammar; one processor per `generate` call, grammars compiled once)."""
    import functools

    import xgrammar as xgr
    from xgrammar.contrib.hf import LogitsProcessor

    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size))
    compiled = functools.lru_cache(maxsize=8)(compiler.compile_json_schema)
    return lambda schema: LogitsProcessor(compiled(schema))


def load_causal_lm(path: str, *, dtype: str, device: str):
    """A causal LM from a resolved local path or hub id, in `dtype` (a config name), on `device`, in eval mode."""
    from transformers import AutoModelForCausalLM

    quiet_progress_bars()
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype)).to(device).eval()


def local_model_dir(path: str, cache_dir: str | None = None) -> str:
    """A path `from_pretrained` and `vllm.LLM` open for a Hugging Face id, a local folder, `bundled:...`, or an
    exported model on object storage (downloaded to a temporary folder first)."""
    import tempfile

    from ray_entigraph import storage  # lazy: pyarrow, fsspec; importing this module costs nothing
    from ray_entigraph.engines.bundled import resolve_model_path  # lazy: pulls in storage (pyarrow, fsspec)

    local = resolve_model_path(path, cache_dir)
    if "://" in local and not local.startswith("file://"):
        tmp = tempfile.mkdtemp(prefix="ray-entigraph-model-")
        storage.get_dir(local, tmp)
        local = tmp
    return local.removeprefix("file://")


def load_model(path: str, *, dtype: str, device: str, cache_dir: str | None = None, torch_threads: int | None = None):
    """(model, tokenizer, device) for a Hugging Face id, a local folder, `bundled:...`, or an exported model
    on object storage (downloaded to a temporary folder first). `dtype="auto"` is float32 on CPU (bf16
    matmuls are slow on many CPUs) and bfloat16 elsewhere; on CPU torch uses `torch_threads` or every core."""
    import os

    import torch

    quiet_progress_bars()
    device = pick_device(device)
    if device == "cpu":
        torch.set_num_threads(torch_threads or os.cpu_count() or 1)
    local = local_model_dir(path, cache_dir)
    if dtype == "auto":
        dtype = "float32" if device == "cpu" else "bfloat16"
    tokenizer = load_tokenizer(local)
    model = load_causal_lm(local, dtype=dtype, device=device)
    return model, tokenizer, device
