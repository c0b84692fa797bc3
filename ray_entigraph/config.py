"""Typed configuration: the single source of truth for every setting.

A config is a YAML file (an instance of `EntiGraphConfig`) plus `key.sub=value` overrides from the command
line. Validation happens here, on the driver, before any Ray worker starts: an unknown key, a wrong type or
an impossible combination raises `ConfigError` naming the key and the fix. The resolved config is written
next to every output and its hash is part of the run's identity.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ray_entigraph.arms import ARMS, arms_reference
from ray_entigraph.errors import ConfigError

__all__ = ["ConfigError", "EntiGraphConfig", "load_config", "derive", "section_hash"]

class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputConfig(_Section):
    path: str = Field("builtin:demo", description=(
        "Source documents: a .jsonl/.parquet file, a folder of .txt/.md files, a glob, or `builtin:demo`."))
    format: Literal["auto", "jsonl", "parquet", "text"] = Field("auto", description=(
        "Input format; `auto` decides by file extension."))
    text_field: str = Field("text", description=(
        "Column holding the document text (jsonl/parquet). `article` is used when this column is absent (QuALITY "
        "layout)."))
    title_field: str = Field("title", description=(
        "Column holding the document title; the file name is used for text files."))
    max_documents: int | None = Field(None, ge=1, description=(
        "Read at most this many documents (for trials); None reads all."))
    where: list[str] = Field(default_factory=list, description=(
        "Keep only records whose columns satisfy every condition, checked at ingest before any model call: "
        "`column op value` with op one of == != >= <= > < in `not in`, value JSON or a bare word, e.g. "
        "['language == en', 'score >= 3']. A record without a named column is recorded as an error; records "
        "left out are counted (`num_filtered` in documents/_files/ markers)."))

    @field_validator("where")
    @classmethod
    def _conditions_parse(cls, value: list[str]) -> list[str]:
        return _check_conditions("input.where", value)


class IngestConfig(_Section):
    max_document_tokens: int = Field(1024, ge=32, description=(
        "Documents longer than this (in model tokens) are split into chunks at paragraph boundaries; every chunk "
        "records its parent."))
    min_document_chars: int = Field(20, ge=1, description=(
        "Documents shorter than this are recorded as errors (`too short`) and not synthesized from."))
    bytes_per_task: int = Field(128 * 2**20, ge=1, description=(
        "A JSON Lines or Parquet file larger than this is read by several ingest tasks, each a byte range of it "
        "(the lines, or the row groups, that start in the range), so that no task reads a large file whole."))
    files_per_task: int = Field(32, ge=1, description=(
        "Small input files are read together, about this many per task (groups cut where a hash of the file's "
        "URL says so, so that a new file changes only its own group), and never more bytes than "
        "bytes_per_task: a million small files are not a million tasks."))


class ModelConfig(_Section):
    name: str = Field("bundled:smollm2-135m-instruct", description=(
        "Generator model: `bundled:smollm2-135m-instruct`, a Hugging Face model id, or a local path."))
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("bfloat16", description=(
        "Weights dtype for inference (bf16 is faster than fp32 on AVX-512 CPUs and on GPUs)."))
    max_model_len: int = Field(2048, ge=128, description="Context length used for prompts plus generated tokens.")
    cache_dir: str | None = Field(None, description=(
        "Where the bundled model is converted to safetensors; default ~/.cache/ray_entigraph or $RAY_ENTIGRAPH_CACHE."))


class VLLMConfig(_Section):
    tensor_parallel_size: int = Field(1, ge=1, description=(
        "GPUs one vLLM replica spans (tensor parallelism); set resources.num_gpus_per_actor to the same number."))
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description=(
        "Share of each GPU's memory vLLM may take (weights + KV cache)."))
    enable_prefix_caching: bool = Field(True, description=(
        "Reuse the KV cache of a shared prompt prefix (the document) across a document's requests."))
    enforce_eager: bool = Field(False, description=(
        "Skip CUDA graphs / torch.compile: faster start, slower steps (tests and the CPU build use true)."))
    max_num_seqs: int | None = Field(None, ge=1, description=(
        "Sequences vLLM runs at once per replica; None: vLLM's default."))
    cpu_kv_cache_gib: int | None = Field(None, ge=1, description=(
        "CPU build only: KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE); None: 4 GiB (vLLM's own default reserves "
        "90% of the machine's memory and refuses to start unless that much is free)."))
    structured_extraction: bool = Field(True, description=(
        "Constrain entity-extraction output to the JSON schema {summary, entities[]} (vLLM structured outputs)."))
    engine_args: dict[str, Any] = Field(default_factory=dict, description=(
        "More keyword arguments passed as they are to `vllm.LLM(...)` (e.g. `quantization`, `kv_cache_dtype`, "
        "`swap_space`)."))


# Hosts whose servers run on this machine: a key sent to them in plain HTTP does not cross a network.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# Environment variables that hold credentials for something other than a model API: never sent as a bearer token.
CREDENTIAL_VARIABLES = frozenset({
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_CLIENT_SECRET", "AZURE_STORAGE_KEY", "GITHUB_TOKEN", "GH_TOKEN", "RAY_AUTH_TOKEN",
})


class OpenAIConfig(_Section):
    base_url: str = Field("http://127.0.0.1:8000/v1", description=(
        "Base URL of an OpenAI-compatible API (`https://api.openai.com/v1`, or a vLLM / llama.cpp / SGLang server's "
        "`/v1`)."))
    api_key_env: str | None = Field("OPENAI_API_KEY", description=(
        "Name of the environment variable holding the API key (the key itself is never read from config, logged or "
        "written); None sends no key."))
    allow_plain_http_key: bool = Field(False, description=(
        "Send the API key to a plain-HTTP `base_url` that is not on this machine (a server inside a private "
        "network); off, such a config is refused, since the key would cross the network unencrypted."))
    served_model: str | None = Field(None, description="Model name the server knows; None: model.name.")
    max_concurrency: int = Field(16, ge=1, description=(
        "Requests in flight at once per actor (at most: halved on a 429 and grown back by one per as many "
        "successes, unless adaptive_concurrency is off)."))
    adaptive_concurrency: bool = Field(True, description=(
        "Halve the requests in flight of an actor on a 429, then grow them back toward max_concurrency."))
    requests_per_minute: float | None = Field(None, gt=0, description=(
        "Requests per minute for the whole run, shared by every actor through one Ray actor (the endpoint's "
        "limit); lowered further when the server's x-ratelimit-* headers report a lower limit. None: no limit."))
    tokens_per_minute: float | None = Field(None, gt=0, description=(
        "Tokens per minute for the whole run (each request counts its prompt tokens plus max_new_tokens), shared "
        "like requests_per_minute. None: no limit."))
    request_timeout_s: float = Field(300.0, gt=0, description="Timeout of one HTTP request (connect + response).")
    max_retries: int = Field(8, ge=0, description=(
        "Retries per request on 429, 5xx, timeouts and dropped connections (exponential backoff with full jitter, "
        "honouring Retry-After)."))
    backoff_base_s: float = Field(1.0, gt=0, description=(
        "First backoff step; step k waits a random time up to base x 2^k."))
    backoff_max_s: float = Field(60.0, gt=0, description="Longest wait between two tries (Retry-After included).")
    prefill: Literal["continue", "instruct"] = Field("continue", description=(
        "How the assistant prefill (a prompt's response_prefix) is sent: `continue` as a final assistant message the "
        "server continues (vLLM, SGLang: `continue_final_message`); `instruct` as an instruction to start the answer "
        "with it (hosted APIs without prefill)."))
    send_repetition_penalty: bool = Field(True, description=(
        "Send `repetition_penalty` in the request body (vLLM, SGLang, llama.cpp accept it; set false for hosted APIs "
        "that reject unknown fields)."))
    extra_body: dict[str, Any] = Field(default_factory=dict, description="More fields merged into every request body.")
    use_batch_api: bool = Field(False, description=(
        "Submit each unit of work as one offline batch (`/v1/files` + `/v1/batches`, half price at providers that "
        "offer it) instead of live requests."))
    batch_poll_s: float = Field(30.0, gt=0, description="Batch API: seconds between status polls.")
    batch_completion_window: str = Field("24h", description="Batch API: the completion window asked for.")
    batch_deadline_s: float = Field(93600.0, gt=0, description=(
        "Batch API: seconds from a batch's creation after which polling stops and its requests fail (26 h: past a "
        "24h completion window); its id stays recorded in output_dir/_batches, so a re-run re-attaches to the batch "
        "instead of paying for it again."))
    tokenizer: str | None = Field(None, description=(
        "Hugging Face tokenizer (id or path) for counting tokens before sending; None: model.name when it loads, "
        "else about 4 characters per token."))
    headers_from_env: dict[str, str] = Field(default_factory=dict, description=(
        "Custom HTTP headers sent with every request, each read from an environment variable: "
        "`{X-Gateway-Token: GATEWAY_TOKEN}` sends header X-Gateway-Token with the value of $GATEWAY_TOKEN (values "
        "are never read from config, logged or written; the same rules as the API key apply)."))

    @model_validator(mode="after")
    def _key_stays_safe(self) -> "OpenAIConfig":
        for name, var in [("api_key_env", self.api_key_env)] + [
                (f"headers_from_env.{h}", v) for h, v in self.headers_from_env.items()]:
            if var in CREDENTIAL_VARIABLES:
                raise ValueError(f"engine.openai.{name} names {var!r}, a credential for something other than a "
                                 "model API, which would be sent to the server. Fix: export the value under its own "
                                 "variable (e.g. OPENAI_API_KEY) and name that one.")
        for header in self.headers_from_env:
            if not header or not all(c.isalnum() or c in "-_" for c in header) or header.lower() in (
                    "authorization", "content-type", "content-length", "host", "x-request-key"):
                raise ValueError(f"engine.openai.headers_from_env: {header!r} is not a header this engine lets you "
                                 "set (letters, digits, '-' and '_'; not Authorization, which api_key_env sets, nor "
                                 "Content-Type, Content-Length, Host or X-Request-Key). Fix: rename or remove it.")
        url = urlsplit(self.base_url)
        secrets = self.api_key_env or self.headers_from_env
        if (secrets and url.scheme == "http" and (url.hostname or "") not in LOOPBACK_HOSTS
                and not self.allow_plain_http_key):
            raise ValueError(f"engine.openai.base_url {self.base_url!r} is plain HTTP to another machine, so the API "
                             "key (or headers_from_env) would cross the network unencrypted. Fix: use https, set "
                             "engine.openai.api_key_env=null for a server without authentication, or set "
                             "engine.openai.allow_plain_http_key=true inside a private network.")
        return self


class EngineConfig(_Section):
    kind: Literal["transformers", "vllm", "openai", "echo"] = Field("transformers", description=(
        "Inference engine behind the engine seam: `transformers` (any device, the laptop default), `vllm` (GPU "
        "actors; its CPU build runs too), `openai` (an OpenAI-compatible HTTP API), `echo` (answers instantly with a "
        "copy of the prompt's end: for measuring the framework alone)."))
    device: str = Field("auto", description=(
        "transformers: `auto` (CUDA when present, else CPU), `cpu`, `cuda`, or `cuda:N`."))
    max_batch_size: int = Field(8, ge=1, description="transformers: requests per generate call inside one actor.")
    torch_threads: int | None = Field(None, ge=1, description=(
        "torch intra-op threads per actor on CPU; None uses all cores of the node."))
    prefix_reuse: bool = Field(True, description=(
        "transformers: compute a document's shared prompt prefix (its key/value cache) once and reuse it for that "
        "document's requests."))
    min_prefix_tokens: int = Field(64, ge=1, description=(
        "transformers: reuse a shared prefix only when it is at least this long."))
    structured_extraction: bool = Field(True, description=(
        "transformers: decode entity extraction and judge ratings under their JSON schema with xgrammar, when it "
        "is installed (vLLM's CPU build installs it; without it the engine prompts for JSON and parses leniently). "
        "vLLM's own setting is engine.vllm.structured_extraction."))
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description="Settings of the vLLM engine.")
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig, description=(
        "Settings of the OpenAI-compatible HTTP engine."))


class CpuPoolConfig(_Section):
    max_workers: int = Field(8, ge=1, description="Most workers (actors or tasks) of this kind at once.")
    num_cpus_per_worker: float = Field(1.0, gt=0, description="CPUs each worker reserves (no GPU, ever).")


class ResourcesConfig(_Section):
    """The model stages' pool at the top (extract, synthesize, judge: the GPU actors), the CPU stages' and
    packing's pools below it, each with its own bounds, so that CPU work never holds a model actor and the
    autoscaler sees each kind's demand apart."""

    min_actors: int = Field(1, ge=1, description="Smallest model actor pool per stage.")
    max_actors: int = Field(1, ge=1, description="Largest model actor pool per stage (the autoscaler grows toward it).")
    num_cpus_per_actor: float = Field(1.0, gt=0, description=(
        "CPUs reserved per model actor. Keep below the node's CPUs so Ray Data read tasks can run."))
    num_gpus_per_actor: float = Field(0.0, ge=0, description="GPUs per model actor (0 on CPU).")
    accelerator_type: str | None = Field(None, description="Ray accelerator type for model actors, e.g. `H100`.")
    batch_size: int = Field(8, ge=1, description=(
        "Rows (documents or task groups) handed to a model actor per call; one call commits one shard."))
    units_in_flight_per_actor: int = Field(1, ge=1, le=16, description=(
        "Units of work (calls, each committed on its own) a model actor runs at once on its one engine: a new "
        "unit's requests join the running batch (vLLM) or the next one (other engines), so the engine does not "
        "idle while a batch drains or the next unit is handed over. 2 to 4 on GPUs. An actor that dies charges an "
        "attempt to every unit it was running (resources.max_unit_attempts)."))
    synthesize_while_extracting: bool = Field(True, description=(
        "Plan and synthesize each extracted document in the same model actor right after its extraction "
        "commits, so the model pool never waits between extract and synthesize (no second model load, and the "
        "document is still in the engine's prefix cache). Applies with the entigraph augmenter, a model "
        "extractor and no global budget (plan.max_tasks_total needs every extraction before the first task); "
        "otherwise synthesis starts when extraction ends. The synthesize stage then does only what is left."))
    max_unit_attempts: int = Field(3, ge=1, le=100, description=(
        "Attempts of one unit of work (one model-actor call) whose actor dies while running it (out of memory, a "
        "segfault, a killed process); after that the unit's requests are recorded as failed with the reason, the "
        "rest of the run goes on and the next run retries them (packing, which cannot skip a unit, stops the run "
        "instead). A CPU task (planning, sealing, curation) whose worker dies 3 times on the same input stops its "
        "stage."))
    cpu: CpuPoolConfig = Field(default_factory=CpuPoolConfig, description=(
        "CPU stages: ingest (reading, tokenizing, chunking), heuristic extraction, curation and dedup."))
    pack: CpuPoolConfig = Field(default_factory=lambda: CpuPoolConfig(max_workers=4), description=(
        "Packing training blocks (tokenizing the corpus for training)."))


class SamplingConfig(_Section):
    temperature: float = Field(0.7, ge=0.0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(256, ge=1, description="Upper bound on generated tokens per request.")
    repetition_penalty: float = Field(1.0, ge=1.0, description=(
        "Multiplicative repetition penalty. The transformers engine applies it to generated tokens only; vLLM and "
        "HTTP servers count the prompt's tokens too, which pushes the output away from the document's own names "
        "and numbers, so prefer `frequency_penalty` there."))
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description=(
        "Subtracted from a token's logit once per time it was already generated (generated tokens only, on "
        "every engine: vLLM, HTTP and transformers). Stops small models looping without penalising the "
        "document's words in the prompt."))
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description=(
        "Subtracted from the logit of every token already generated (generated tokens only, on every engine)."))

    def key(self) -> dict[str, Any]:
        return self.model_dump()


class ExtractConfig(_Section):
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.0, max_new_tokens=200, repetition_penalty=1.2),
        description="Sampling for entity extraction.")
    max_attempts: int = Field(3, ge=1, le=20, description=(
        "Attempts per document before it is recorded as failed (later attempts sample at temperature 0.7)."))
    max_entities: int = Field(24, ge=2, description=(
        "Keep at most this many entities per document (in the order given)."))
    require_entities_in_document: bool = Field(True, description=(
        "Drop entities whose text does not occur in the document (small models invent entities)."))
    min_entities: int = Field(2, ge=2, description=(
        "An extraction with fewer (grounded) entities counts as a failed attempt."))
    fallback: Literal["none", "heuristic"] = Field("heuristic", description=(
        "After the last failed attempt: `heuristic` takes capitalised phrases from the document (rows marked "
        "entities_source=heuristic); `none` records the document as failed."))
    source: Literal["model", "heuristic"] = Field("model", description=(
        "`model`: the generator lists the entities (EntiGraph); `heuristic`: the document's capitalised phrases, "
        "with no model call, for generators too small to list names as the document writes them (measure the "
        "parse rate first: the extraction rows' entities_source and parse_how)."))


class PlanConfig(_Section):
    max_pairs_per_doc: int | None = Field(None, ge=0, description=(
        "Cap on entity pairs per document; None runs all C(n,2) pairs, as the paper does."))
    max_triplets_per_doc: int = Field(10, ge=0, description=(
        "Triplets sampled per document (the paper samples a subset of C(n,3))."))
    max_tasks_total: int | None = Field(None, ge=1, description=(
        "Global budget of relation requests, shared fairly across documents; None means no global cap."))
    tasks_per_group: int = Field(16, ge=1, description=(
        "Requests of one document bundled into one unit of work, served back to back on one replica (prefix reuse)."))
    rephrase_repeats: int = Field(1, ge=1, description="Rephrase augmenter: generations per (document, style).")


def _check_conditions(key: str, value: list[str]) -> list[str]:
    from ray_entigraph.text.conditions import parse_condition

    for text in value:
        try:
            parse_condition(text)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return value


class RewriteFormat(_Section):
    name: str = Field(..., description="A template of the prompt set's `rephrase` section (e.g. `faq`).")
    when: list[str] = Field(default_factory=list, description=(
        "Conditions over the document's columns (its input metadata, `num_tokens`, `source`, `title`, "
        "`chunk_index`, `num_chunks`), all of which must hold: `column op value` as in input.where. A document "
        "without a named column does not get this format."))
    repeats: int = Field(1, ge=1, description="Rewrites of one document in this format (different seeds).")

    @field_validator("when")
    @classmethod
    def _when_parses(cls, value: list[str]) -> list[str]:
        return _check_conditions("rewrite.formats[].when", value)


class RewriteConfig(_Section):
    formats: list[RewriteFormat] = Field(default_factory=list, description=(
        "The `rewrite` augmenter's formats, each chosen per document by its `when` rules; empty: every format "
        "of the prompt set, once, for every document."))
    output_ratio: float = Field(1.0, gt=0.0, le=8.0, description=(
        "A rewrite's token budget in proportion to its document: max_new_tokens = output_ratio x the document's "
        "tokens, within [min_new_tokens, synthesis.sampling.max_new_tokens]."))
    min_new_tokens: int = Field(64, ge=1, description="The smallest per-document max_new_tokens of a rewrite.")

    def key(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class SynthesisConfig(_Section):
    augmenter: Literal["entigraph", "rephrase", "rewrite"] = Field("entigraph", description=(
        "`entigraph` (entities, pairs, triplets), `rephrase` (the paper's WRAP-style baseline: three styles) or "
        "`rewrite` (whole-corpus rewriting: formats chosen per document by rules, `rewrite.*`, with output budgets "
        "in proportion to the document)."))
    prompts: str = Field("entigraph-v1", description=(
        "Prompt set: a built-in name (`entigraph-v1`, `rephrase-v1`) or a path to a YAML prompt file."))
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description=(
        "Sampling for relation and rephrase texts."))


class CurateConfig(_Section):
    enabled: bool = Field(False, description=(
        "Score every synthetic row against its document, filter and deduplicate, and train on the result "
        "(output_dir/curated/<id>); the synthetic stage's own output is never changed."))
    min_grounding: float | None = Field(None, ge=0.0, le=1.0, description=(
        "Drop rows whose grounding score (share of their entities, numbers and content words the document contains) "
        "is below this; None keeps every row (rows are still scored)."))
    min_sentence_grounding: float | None = Field(None, ge=0.0, le=1.0, description=(
        "Repair: drop the sentences of a row whose grounding score is below this and keep the rest; None keeps every "
        "sentence."))
    min_chars: int = Field(40, ge=0, description=(
        "A row shorter than this after repair is dropped (nothing left to learn from)."))
    dedup: bool = Field(False, description=(
        "Drop near-duplicate rows across the corpus (MinHash over word shingles, LSH buckets); the first row of "
        "each cluster in the committed order (partition, shard, row) is kept."))
    dedup_threshold: float = Field(0.8, gt=0.0, le=1.0, description=(
        "Estimated Jaccard similarity of word shingles at or above which two rows are near-duplicates (checked "
        "within a partition; across partitions the LSH bands are tuned to it)."))
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations per row.")
    ngram: int = Field(5, ge=1, le=20, description="Words per shingle.")
    judge: bool = Field(False, description=(
        "Also rate every synthetic row with a model (the `judge_prompts` set through the configured engine): a "
        "`judge_score` in [0, 1] per row, stored in output_dir/judged/<id>. Worth it with a capable model only; the "
        "bundled 135M model's ratings are noise."))
    judge_model: str | None = Field(None, description=(
        "The judge's model (same engine kind and settings as synthesis); None uses model.name."))
    judge_prompts: str = Field("judge-v1", description=(
        "Prompt set with a `judge` template (built-in name or YAML path); its version is part of the judge's "
        "identity."))
    min_judge_score: float | None = Field(None, ge=0.0, le=1.0, description=(
        "Drop rows whose judge score is below this, and rows the judge gave no rating (reason recorded); None keeps "
        "every row. Needs judge=true."))
    output_filters: list[Literal["looping", "truncated", "refusal", "language"]] = Field(
        default_factory=list, description=(
            "Drop what small generators get wrong, each drop recorded with its reason: `looping` (one 4-word span "
            "a quarter of the text), `truncated` (stopped at max_new_tokens), `refusal` (\"I'm sorry, ...\"), "
            "`language` (not the document's script; an English document's text not English)."))

    def identity(self) -> dict[str, Any]:
        """What decides the curated rows (everything but `enabled`; no output filters: left out, as before
        they existed)."""
        return self.model_dump(exclude={"enabled"} | ({"output_filters"} if not self.output_filters else set()))

    @model_validator(mode="after")
    def _judge_threshold_needs_judge(self) -> "CurateConfig":
        if self.min_judge_score is not None and not self.judge:
            raise ValueError("curate.min_judge_score is set but curate.judge is false. Fix: set curate.judge=true "
                             "(a model rates every row) or remove min_judge_score.")
        return self


class ReplaySource(_Section):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description=(
        "Short name (letters, digits, _.-); rows are tagged replay:<name>."))
    path: str = Field(..., description=(
        "A Parquet or JSONL file, folder or glob (local or any fsspec URL) of general text."))
    text_field: str = Field("text", description="The column holding the text.")
    weight: float = Field(1.0, gt=0, description="Relative weight among replay sources.")


STREAM_NAME = re.compile(r"documents|synthetic|megadocs|format:[A-Za-z0-9_.-]+|kind:[A-Za-z0-9_.:-]+")


class TrainConfig(_Section):
    name: str = Field("train", pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$", description=(
        "Folder under output_dir for this training's mixture, checkpoints, metrics and exported model (`sweep` "
        "trains several, each under its own name). Packed blocks are shared under output_dir/train/blocks."))
    base_model: str | None = Field(None, description=(
        "Model to continue pretraining; None uses model.name (the generator)."))
    corpus: Literal["synthetic", "raw", "synthetic+raw"] = Field("synthetic", description=(
        "What to train on: the synthetic corpus, the source documents themselves (the Raw CPT baseline), or both."))
    max_synthetic_tokens: int | None = Field(None, ge=1, description=(
        "Train on a seeded random subset of the synthetic corpus of about this many tokens (whole blocks); None uses "
        "all of it. `sweep` sets it per budget, like the paper's scaling experiment."))
    replay: list[ReplaySource] = Field(default_factory=list, description=(
        "General-text corpora mixed in so that the model does not forget."))
    replay_share: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "Share of training blocks that are replay blocks (the paper: 0.1); needs train.replay sources."))
    replay_mode: Literal["replace", "add"] = Field("replace", description=(
        "`replace`: replay blocks take synthetic blocks' places (the paper); `add`: they are added on top."))
    block_len: int = Field(2048, ge=8, description=(
        "Tokens per training sequence; texts are packed with an EOS after each (and a BOS before each where the "
        "tokenizer starts texts with one, as Llama 3's does). No token is dropped: the tokens short of a last block "
        "in every partition or file are packed together into one more shard per source."))
    packing: Literal["shuffled", "megadocs"] = Field("shuffled", description=(
        "`shuffled`: synthetic texts packed one after another in task order (the documents' texts interleaved); "
        "`megadocs`: all synthetic texts of one source document joined into one long text, kept contiguous in the "
        "packed stream (arXiv 2603.18534, 'stitching')."))
    streams: dict[str, float] = Field(default_factory=dict, description=(
        "The training mixture by token share (replay aside): stream -> share, shares summing to 1. Streams: "
        "`documents` (the human-written documents), `synthetic` (every synthetic row), `format:<name>` (the rewrite "
        "augmenter's rows of one format, e.g. `format:faq`), `kind:<kind>` (synthetic rows of one kind, e.g. "
        "`kind:pair`), `megadocs` (each document followed by all its synthetic texts, as one text). An epoch is the "
        "largest mix in which no stream repeats a block; each stream's share is exact to one block per epoch; "
        "train.max_steps sets a token budget. Empty: train.corpus decides."))
    stitch_chunks: bool = Field(True, description=(
        "With the rewrite augmenter: a long document's chunks were rewritten one by one; train on each format's "
        "rewrites of its chunks joined back in chunk order, one text per document, format and repeat."))
    global_batch_size: int = Field(16, ge=1, description=(
        "Sequences per optimizer step over all workers (the paper: 16)."))
    micro_batch_size: int = Field(1, ge=1, description=(
        "Sequences per forward pass on one worker; gradient accumulation makes up the rest."))
    epochs: int = Field(2, ge=1, description="Passes over the mixed stream (the paper: 2).")
    seed: int | None = Field(None, description=(
        "Seed of training alone (synthetic subset, mixture and order, initialisation); None uses the run seed. "
        "`ablate` sets it per ablation.seeds without touching synthesis."))

    def effective_seed(self, run_seed: int) -> int:
        return run_seed if self.seed is None else self.seed
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (None: all epochs).")

    lr: float = Field(5e-6, gt=0, description="Peak learning rate (the paper: 5e-6).")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description=(
        "Linear warmup over this share of steps, then cosine decay."))
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="The cosine decays to peak x this.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (the paper: 0.01).")
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clipping.")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (one per GPU on GPU nodes).")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker.")
    use_gpu: bool = Field(False, description="Train on GPUs (NCCL) instead of CPUs (gloo).")
    accelerator_type: str | None = Field(None, description=(
        "Ray accelerator type the training workers must run on, e.g. `H100` (keeps them off the synthesis GPU nodes "
        "of a mixed cluster)."))
    strategy: Literal["ddp", "fsdp"] = Field("ddp", description=(
        "`ddp`: a full replica per worker (small models); `fsdp`: FSDP2, parameters, gradients and optimizer "
        "state sharded per decoder layer (large models; gloo on CPU, NCCL on GPUs)."))
    dtype: Literal["float32", "bfloat16"] = Field("float32", description=(
        "Compute precision. Weights, gradient reduction and optimizer state stay float32 (at a learning rate of "
        "5e-6 bfloat16 weights would lose the updates); `bfloat16` computes forward and backward in bfloat16 "
        "(FSDP2 mixed precision, or autocast under DDP on GPUs)."))
    activation_checkpointing: bool = Field(False, description=(
        "Recompute each decoder layer's activations in the backward pass: less memory, about a third more compute."))
    torch_threads: int | None = Field(None, ge=1, description=(
        "torch threads per worker on CPU; None: the node's cores / workers on it."))
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=list, description=(
        "Experiment trackers rank 0 also sends every metrics line to, through their own libraries (installed on "
        "the training nodes): TensorBoard event files under <train folder>/tensorboard, a Weights & Biases run, "
        "an MLflow run. The appended metrics/ segments are written either way."))
    tracker_project: str = Field("ray-entigraph", description=(
        "Weights & Biases project or MLflow experiment the runs go to (each run is named after train.name)."))
    max_failures: int = Field(2, ge=0, description=(
        "Times Ray Train restarts the workers after one is lost (a node gone, a process killed), each time from "
        "the latest checkpoint; 0: a lost worker fails the run."))
    checkpoint_every: int = Field(50, ge=1, description=(
        "Save a checkpoint (model, optimizer, scheduler, data position, RNG) every N steps."))
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept in storage.")
    log_every: int = Field(1, ge=1, description="Write a metrics line every N steps.")
    peak_tflops_per_gpu: float = Field(989.0, gt=0, description=(
        "Peak dense bf16 TFLOP/s of one GPU, for MFU (H100 SXM: 989)."))

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if any(part in (".", "..") for part in self.name.split("/")):
            raise ValueError(f"train.name {self.name!r} would leave output_dir. Fix: use folder names without "
                             "'.' or '..' segments, e.g. train.name=runs/first.")
        if self.global_batch_size % (self.micro_batch_size * self.num_workers):
            raise ValueError(
                f"train.global_batch_size ({self.global_batch_size}) is not a multiple of train.micro_batch_size "
                f"({self.micro_batch_size}) x train.num_workers ({self.num_workers}). Fix: change one of them.")
        if self.replay_share > 0 and not self.replay:
            raise ValueError("train.replay_share > 0 but train.replay lists no source. Fix: add a replay source or "
                             "set train.replay_share=0.")
        if self.streams:
            bad = [k for k in self.streams if not STREAM_NAME.fullmatch(k)]
            if bad:
                raise ValueError(f"train.streams names an unknown stream {bad[0]!r}. Fix: use documents, synthetic, "
                                 "megadocs, format:<name> or kind:<kind>.")
            if any(v <= 0 for v in self.streams.values()) or abs(sum(self.streams.values()) - 1.0) > 1e-6:
                raise ValueError(f"train.streams shares must be > 0 and sum to 1; they sum to "
                                 f"{sum(self.streams.values()):g}. Fix: rescale them.")
            if self.corpus != "synthetic" or self.max_synthetic_tokens is not None:
                raise ValueError("train.streams is set together with train.corpus or train.max_synthetic_tokens. "
                                 "Fix: name the documents as a stream (documents) and set the budget with "
                                 "train.max_steps.")
        if len({r.name for r in self.replay}) != len(self.replay):
            raise ValueError("train.replay has two sources with the same name. Fix: give each a distinct name.")
        return self


class EvalConfig(_Section):
    questions: str = Field("auto", description=(
        "QuALITY-layout JSON Lines (`article`, `title`, `questions[]` with `options` and 1-based `gold_label`), "
        "local or any fsspec URL; `auto` uses input.path when it holds questions (the demo corpus does); `none` "
        "skips question answering."))
    protocol: Literal["options", "generative"] = Field("options", description=(
        "`options`: pick the option whose text has the highest mean per-token log-likelihood after the question "
        "(deterministic, fast, works on small base models); `generative`: few-shot chain-of-thought, answer letter "
        "parsed from the text (the paper's protocol), generated by the configured engine inside the evaluation "
        "task: vLLM (engine.vllm settings; on GPUs give the task eval.num_gpus) when engine.kind is vllm, else "
        "transformers on the model it scores (a hosted API cannot serve the trained checkpoint); a model without "
        "a chat template (a base model) gets the examples as plain few-shot text."))
    include_base: bool = Field(True, description="Evaluate the base model (train.base_model or model.name).")
    include_trained: bool = Field(True, description=(
        "Evaluate the model exported by training (output_dir/<train.name>/model) when it exists."))
    models: list[str] = Field(default_factory=list, description=(
        "More models to compare: Hugging Face ids, local folders or fsspec URLs of exported models; `label=path` "
        "names one."))
    open_book_reference: bool = Field(True, description=(
        "Also score the base model with the document in its context: the ceiling that closed-book training aims at."))
    max_questions: int | None = Field(None, ge=1, description=(
        "Evaluate at most this many questions (in file order); None: all."))
    batch_size: int = Field(16, ge=1, description=(
        "Sequences per forward pass (options) or per generate call (generative)."))
    few_shot: int = Field(4, ge=0, le=5, description=(
        "Generative protocol: worked examples in the prompt (from the built-in eval prompt set, never from the "
        "evaluated questions; the paper: 5). With 4 the examples' answers name each of A-D once."))
    max_new_tokens: int = Field(256, ge=8, description=(
        "Generative protocol: token budget for the reasoning and the answer."))
    perplexity_texts: int = Field(64, ge=0, description=(
        "Texts used for each perplexity (source documents for knowledge, held-out text for forgetting); 0 skips "
        "perplexity."))
    perplexity_window: int = Field(1024, ge=16, description=(
        "Tokens per perplexity window (texts are cut into non-overlapping windows)."))
    forgetting_text: str = Field("builtin:stdlib-docs-heldout", description=(
        "Held-out general text for the forgetting perplexity; must not be in the replay data. The built-in is "
        "docstrings of standard-library modules that `builtin:stdlib-docs` does not use."))
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description=(
        "Evaluation precision: `auto` is float32 on CPU and bfloat16 on GPUs."))
    device: str = Field("auto", description="`auto`, `cpu`, `cuda`, `cuda:N`.")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved by each evaluation task (one Ray task per model).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per evaluation task.")
    torch_threads: int | None = Field(None, ge=1, description=(
        "torch threads per evaluation task on CPU; None: all cores of the node."))
    max_parallel: int = Field(1, ge=1, description="Models evaluated at once (raise it on a GPU cluster).")


def _default_baselines() -> list[Literal["raw", "rephrase"]]:
    return ["raw", "rephrase"]


class SweepConfig(_Section):
    budgets: list[int] = Field(default_factory=list, description=(
        "Synthetic token budgets to train on (subsets of the synthetic corpus); empty: `num_budgets` log-spaced "
        "budgets up to the whole corpus."))
    num_budgets: int = Field(4, ge=1, description="How many budgets when `budgets` is empty (each half the next).")
    raw_cpt_steps: int | None = Field(None, ge=1, description=(
        "Optimizer steps of the Raw CPT baseline (many passes over the documents, which are far shorter than "
        "any synthetic budget); None: as many steps as the largest EntiGraph budget trains."))
    mixtures: list[dict[str, float]] = Field(default_factory=list, description=(
        "Token shares of train.streams to compare (e.g. [{documents: 0.7, format:faq: 0.3}, {documents: 0.3, "
        "format:faq: 0.7}]): one arm per mixture, `mix-<i>`, each trained for train.max_steps, instead of the "
        "token budgets; the rephrase baseline is not trained."))
    baselines: list[Literal["raw", "rephrase"]] = Field(default_factory=_default_baselines, description=(
        "Baselines trained and evaluated beside EntiGraph: `raw` (Raw CPT on the documents), `rephrase` (the "
        "WRAP-style rephrase augmenter, synthesized into output_dir/sweep/rephrase)."))

    @field_validator("mixtures")
    @classmethod
    def _mixtures_are_streams(cls, value: list[dict[str, float]]) -> list[dict[str, float]]:
        for shares in value:
            TrainConfig(streams=shares)  # the same checks as train.streams
        return value


class RunConfig(_Section):
    raw_cpt_control_steps: int | None = Field(None, ge=1, description=(
        "`run` also trains Raw CPT (the documents alone, train's other settings) for this many steps under "
        "<output_dir>/control/, and evaluates it beside the trained model as the positive control: the report "
        "says whether it beat the base model, and whether the trained model did. None: no control."))


class AblationConfig(_Section):
    variants: list[str] = Field(
        default_factory=lambda: ["entigraph", "grounded", "dedup", "freeform", "entigraph+raw", "raw-cpt"],
        description="Arms of `ray-entigraph ablate`, trained at equal synthetic tokens and equal steps: "
                    f"{arms_reference()}.")
    min_grounding: float = Field(0.6, ge=0.0, le=1.0, description="`grounded` arm: curate.min_grounding.")
    min_sentence_grounding: float = Field(0.5, ge=0.0, le=1.0, description=(
        "`repaired` arm: curate.min_sentence_grounding."))
    min_judge_score: float = Field(0.75, ge=0.0, le=1.0, description=(
        "`judged` arm: curate.judge=true with this curate.min_judge_score (a rating of 4 of 5 or better)."))
    temperature: float = Field(1.0, ge=0.0, description=(
        "`temperature` arm: synthesis.sampling.temperature (the paper: 1.0)."))
    freeform_prompts: str = Field("entigraph-freeform-v1", description="`freeform` arm: its prompt set.")
    focused_prompts: str = Field("entigraph-focused-v1", description="`focused` arm: its prompt set.")
    qa_prompts: str = Field("entigraph-qa-v1", description="`qa-mix` arm: its prompt set.")
    epochs: int | None = Field(None, ge=1, description=(
        "Passes over the synthetic token budget that set every arm's number of optimizer steps; None uses "
        "train.epochs."))
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description=(
        "Training seeds: every arm trains once per seed (train.seed); accuracy is averaged over seeds per question "
        "and the intervals resample articles. The run seed's arms keep their plain names, so adding seeds reuses "
        "them."))
    num_budgets: int = Field(1, ge=1, le=4, description=(
        "Synthetic token budgets per arm: the largest that every arm can fill (or `budget_tokens`), then halvings "
        "of it (for the accuracy-against-tokens plot)."))
    budget_tokens: int | None = Field(None, ge=1, description=(
        "The synthetic token budget of every arm: over-generate (plan.*, synthesis.sampling.max_new_tokens), then "
        "every arm trains on this many tokens, so a filter that drops rows does not shrink the other arms. An arm "
        "holding fewer trains on all it has at the same steps, and the report shows its tokens. None: the largest "
        "budget every arm can fill (the most aggressive filter sets it)."))
    raw_cpt_steps: int | None = Field(None, ge=1, description=(
        "Optimizer steps of the `raw-cpt` arm, its own budget (the positive control must be trained enough to "
        "learn); None: the same steps as the other arms."))

    @field_validator("variants")
    @classmethod
    def _known_arms(cls, variants: list[str]) -> list[str]:
        for name in variants:
            if name not in ARMS:
                close = difflib.get_close_matches(name, list(ARMS), n=1, cutoff=0.6)
                hint = f"Did you mean {close[0]!r}? " if close else ""
                raise ValueError(f"ablation.variants: {name!r} is not an arm of `ablate`. {hint}"
                                 f"Fix: use arms among {', '.join(ARMS)}.")
        return variants


class CostConfig(_Section):
    usd_per_million_prompt_tokens: float | None = Field(None, ge=0, description=(
        "Price of prompt tokens, for cost estimates in the ledger, `status` and `--dry-run`; None shows no cost."))
    usd_per_million_generated_tokens: float | None = Field(None, ge=0, description=(
        "Price of generated tokens, likewise."))

    def estimate(self, prompt_tokens: int, generated_tokens: int) -> float | None:
        if self.usd_per_million_prompt_tokens is None and self.usd_per_million_generated_tokens is None:
            return None
        return (prompt_tokens * (self.usd_per_million_prompt_tokens or 0.0)
                + generated_tokens * (self.usd_per_million_generated_tokens or 0.0)) / 1e6


class LeaseConfig(_Section):
    ttl_s: float = Field(300.0, gt=0, description=(
        "A run's lease on output_dir is stale once its last heartbeat is this old; another run may then take it "
        "over (and the old run's late commits are refused)."))
    heartbeat_s: float = Field(30.0, gt=0, description="How often a running command renews its lease.")

    @model_validator(mode="after")
    def _beats_within_ttl(self) -> "LeaseConfig":
        if self.heartbeat_s * 2 > self.ttl_s:
            raise ValueError(f"lease.heartbeat_s ({self.heartbeat_s:g}) must be at most half of lease.ttl_s "
                             f"({self.ttl_s:g}), or a live run looks dead. Fix: lower lease.heartbeat_s.")
        return self


class StorageConfig(_Section):
    """Object-store timeouts and retries, set explicitly so that an endpoint that stops answering fails a run
    within a known time instead of minutes per operation (the library defaults). Every process of a run uses
    them: the driver, and through the job's environment every Ray worker."""

    connect_timeout_s: float = Field(10.0, gt=0, description="Seconds to open a connection to the object store.")
    read_timeout_s: float = Field(60.0, gt=0, description=(
        "Seconds to wait for (more of) an answer of the object store before the attempt fails."))
    max_attempts: int = Field(4, ge=1, le=20, description=(
        "Attempts per object-store request (throttling, 5xx, timeouts and dropped connections are retried with "
        "backoff). An operation against an endpoint that accepts connections and never answers fails after "
        "about max_attempts x (connect_timeout_s + read_timeout_s) plus backoff."))

    def settings(self) -> dict[str, float]:
        return self.model_dump()


class EntiGraphConfig(_Section):
    # set by `derive`: the output_dir of the run this config is an arm of (a sweep or ablation arm, run's
    # positive control); such an arm in its run's own folder does not replace the run's config.yaml
    _arm_of: str | None = PrivateAttr(default=None)
    output_dir: str = Field("runs/demo", description=(
        "Where every stage writes: a local path, s3://bucket/prefix, or any fsspec URL (S3 endpoint and credentials "
        "come from the standard AWS variables). The resolved config is saved here."))
    seed: int = Field(0, description="Run seed; every random choice derives from (seed, doc_id, kind).")
    max_error_fraction: float = Field(0.5, ge=0.0, le=1.0, description=(
        "Fail the stage when more than this share of its requests fail."))
    num_partitions: int = Field(16, ge=1, le=65536, description=(
        "Documents are split by a hash of their id into this many partitions; every stage commits, seals and "
        "resumes partition by partition, so the driver reads O(partitions) objects. Fixed when output_dir is "
        "first written (recorded in its _layout.json). Aim for a few partitions per model replica at least."))
    input: InputConfig = Field(default_factory=InputConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    plan: PlanConfig = Field(default_factory=PlanConfig)
    synthesis: SynthesisConfig = Field(default_factory=SynthesisConfig)
    rewrite: RewriteConfig = Field(default_factory=RewriteConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    cost: CostConfig = Field(default_factory=CostConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    run: RunConfig = Field(default_factory=RunConfig, description="Settings of `ray-entigraph run` itself.")
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    ablation: AblationConfig = Field(default_factory=AblationConfig)
    lease: LeaseConfig = Field(default_factory=LeaseConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @model_validator(mode="after")
    def _cross_field_checks(self) -> "EntiGraphConfig":
        if not self.output_dir.strip():
            raise ValueError("output_dir is empty (it would mean the current folder). Fix: set output_dir to a "
                             "folder or URL of its own, e.g. output_dir=runs/first.")
        if self.resources.min_actors > self.resources.max_actors:
            raise ValueError(
                f"resources.min_actors ({self.resources.min_actors}) > resources.max_actors "
                f"({self.resources.max_actors}). Fix: raise resources.max_actors or lower resources.min_actors."
            )
        tp = self.engine.vllm.tensor_parallel_size
        if self.engine.kind == "vllm" and tp > 1 and self.resources.num_gpus_per_actor != tp:
            raise ValueError(
                f"engine.vllm.tensor_parallel_size is {tp} but resources.num_gpus_per_actor is "
                f"{self.resources.num_gpus_per_actor:g}: a replica needs one GPU per tensor-parallel rank. "
                f"Fix: set resources.num_gpus_per_actor={tp}."
            )
        # Prompt = document chunk + instructions; generation must fit in what is left.
        room = self.model.max_model_len - self.ingest.max_document_tokens - _PROMPT_OVERHEAD_TOKENS
        for key, sampling in (("synthesis.sampling", self.synthesis.sampling),
                              ("extract.sampling", self.extract.sampling)):
            if sampling.max_new_tokens > room:
                raise ValueError(
                    f"{key}.max_new_tokens ({sampling.max_new_tokens}) does not fit: model.max_model_len "
                    f"({self.model.max_model_len}) - ingest.max_document_tokens ({self.ingest.max_document_tokens}) "
                    f"- {_PROMPT_OVERHEAD_TOKENS} tokens of instructions leaves {room}. "
                    f"Fix: lower {key}.max_new_tokens or ingest.max_document_tokens, or raise model.max_model_len."
                )
        if self.synthesis.augmenter in ("rephrase", "rewrite") and self.synthesis.prompts.startswith("entigraph"):
            want = "rephrase-v1" if self.synthesis.augmenter == "rephrase" else "rewrite-v1"
            raise ValueError(
                f"synthesis.augmenter is {self.synthesis.augmenter!r} but synthesis.prompts is an EntiGraph prompt "
                f"set. Fix: set synthesis.prompts={want} (or your own prompt file with a `rephrase` section)."
            )
        return self

    def config_hash(self) -> str:
        """Stable hash of the resolved config (part of every manifest)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# Tokens reserved for instructions and few-shot examples around a document chunk in any prompt.
_PROMPT_OVERHEAD_TOKENS = 512


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"Override {dotted!r}: {part!r} is a value, not a section.")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """Turn ["a.b=1", "c=x"] into a nested dict; values are parsed as YAML scalars (1 -> int, true -> bool)."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override {item!r} is not of the form key.sub=value (e.g. plan.max_triplets_per_doc=5).")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-")
        if not key:
            raise ConfigError(f"Override {item!r} has an empty key.")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            problem = str(exc).splitlines()[0]
            raise ConfigError(f"Override {item!r}: its value is not valid YAML ({problem}). Fix: quote it, or "
                              "complete the list or mapping (e.g. seed=1, eval.models='[a, b]').") from None
        _set_dotted(tree, key, value)
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_known_keys(ann, prefix + name + "."))
    return keys


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    known = _known_keys(EntiGraphConfig)
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(loc, known, n=1, cutoff=0.6)
            hint = (f" Did you mean {close[0]!r}?" if close
                    else " Fix: remove it; `ray-entigraph validate --print` lists every key.")
            lines.append(f"  {loc}: unknown key.{hint}")
        elif e["type"] == "value_error":
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        else:
            got = e.get("input")
            lines.append(f"  {loc or '<root>'}: {e['msg']} (got {got!r}).")
    if len(lines) == 1:  # one mistake: one line, as the CLI prints every user error
        return "Invalid configuration: " + lines[0].strip()
    return "Invalid configuration:\n" + "\n".join(lines)


PRESETS_DIR = Path(__file__).parent / "presets"  # installed with the package: `--config demo` from any folder
EXTENDS_KEY = "extends"


def presets() -> list[str]:
    """The names of the presets installed with the package (`--config <name>`)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def resolve_config_path(path: str | Path, relative_to: Path | None = None) -> Path:
    """A config file's path: an existing file (relative to `relative_to` when given, for `extends:`), else a
    preset installed with the package (`demo`, `demo.yaml` or `configs/demo.yaml`)."""
    p = Path(path).expanduser()
    candidates = [relative_to / p] if relative_to is not None and not p.is_absolute() else []
    candidates.append(p)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    preset = PRESETS_DIR / (p.stem + ".yaml")
    if not p.is_absolute() and p.suffix in ("", ".yaml", ".yml") and preset.is_file():
        return preset
    raise ConfigError(f"Config file {str(path)!r} does not exist. Fix: pass an existing YAML file or a preset "
                      f"installed with the package ({', '.join(presets())}).")


def read_config_file(path: str | Path, relative_to: Path | None = None, _seen: tuple[Path, ...] = ()) -> dict:
    """A config file's mapping with its `extends:` chain applied: the file's keys merged over the preset or
    file it extends (a path relative to the extending file, or a preset name)."""
    p = resolve_config_path(path, relative_to).resolve()
    if p in _seen:
        chain = " -> ".join(str(s) for s in (*_seen, p))
        raise ConfigError(f"Config file {str(p)!r} extends itself ({chain}). Fix: remove the cycle of `extends:`.")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {str(p)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {str(p)!r} must hold a mapping of keys, not {type(data).__name__}.")
    parent = data.pop(EXTENDS_KEY, None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"Config file {str(p)!r}: `extends:` must name one preset or YAML file, "
                          f"not {parent!r}.")
    return _merge(read_config_file(parent, p.parent, (*_seen, p)), data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> EntiGraphConfig:
    """Load a YAML config (a file, or a preset installed with the package, with its `extends:` chain) or the
    built-in defaults, apply dotted overrides, and validate."""
    return config_from_dict(read_config_file(path) if path is not None else {}, overrides)


def as_config(config: "EntiGraphConfig | str | Path | None", overrides: list[str] | None = None) -> EntiGraphConfig:
    """A config given as an `EntiGraphConfig`, a preset name, a YAML path or None (the built-in defaults), with
    dotted overrides applied on top: what every step of the Python API accepts."""
    if isinstance(config, EntiGraphConfig):
        return config_from_dict(config.model_dump(mode="json"), overrides) if overrides else config
    return load_config(config, overrides)


def config_from_dict(data: dict, overrides: list[str] | None = None) -> EntiGraphConfig:
    """A config from a mapping (a parsed YAML file, a run's saved config, `config.model_dump()`) and dotted
    overrides, validated like `load_config`."""
    data = _merge(data, parse_overrides(overrides or []))
    try:
        config = EntiGraphConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None
    config = absolutize_local_paths(config)
    check_local_models(config)
    return config


def check_local_models(config: EntiGraphConfig) -> None:
    """A model named by a local path must exist (otherwise transformers reads it as a hub id and fails in a
    worker with an unrelated message)."""
    for key, name in (("model.name", config.model.name), ("train.base_model", config.train.base_model)):
        if name and name.startswith(("/", "./", "../", "~")) and not os.path.exists(os.path.expanduser(name)):
            raise ConfigError(f"{key} {name!r} is a local path that does not exist. Fix: point it at a folder "
                              "holding a Hugging Face model (config.json and weights), or use a hub id.")


def derive(config: EntiGraphConfig, overrides: list[str]) -> EntiGraphConfig:
    """A validated copy of `config` with dotted overrides applied (how `sweep` builds each arm's config)."""
    try:
        derived = EntiGraphConfig.model_validate(_merge(config.model_dump(mode="json"), parse_overrides(overrides)))
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None
    derived = absolutize_local_paths(derived)
    derived._arm_of = config._arm_of or config.output_dir
    return derived


def without_streams(config: EntiGraphConfig) -> EntiGraphConfig:
    """`config` with train.streams emptied (a `derive` override would merge into the mapping, not replace it)."""
    return config.model_copy(update={"train": config.train.model_copy(update={"streams": {}})})


def is_arm_in_its_run_folder(config: EntiGraphConfig) -> bool:
    """Whether `config` is a `derive`d arm that writes into its run's own output_dir (whose config.yaml stays
    the run's: `status`, `view`, `export` and `load_corpus` read it)."""
    return config._arm_of is not None and config._arm_of.rstrip("/") == config.output_dir.rstrip("/")


def section_hash(config: EntiGraphConfig, exclude: tuple[str, ...]) -> str:
    """Hash of the config without the named top-level sections (what a step of `run` depends on)."""
    blob = json.dumps(config.model_dump(mode="json", exclude=set(exclude)), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _absolute(path: str) -> str:
    if "://" in path or path.startswith("builtin:") or not path.strip():
        return path  # a blank path stays blank: it is refused by name, never read as the current folder
    return os.path.abspath(os.path.expanduser(path))


def _absolute_model(spec: str) -> str:
    """`label=path` or `path`; a local folder becomes absolute, a hub id (org/name, not on disk) stays."""
    label, sep, path = spec.rpartition("=")
    if "://" not in path and os.path.exists(os.path.expanduser(path)):
        path = _absolute(path)
    return f"{label}{sep}{path}"


def absolutize_local_paths(config: EntiGraphConfig) -> EntiGraphConfig:
    """Relative local paths are resolved against the current directory here, on the driver: Ray workers
    run in other directories."""
    config.output_dir = _absolute(config.output_dir)
    config.input.path = _absolute(config.input.path)
    for source in config.train.replay:
        source.path = _absolute(source.path)
    if config.eval.questions not in ("auto", "none"):
        config.eval.questions = _absolute(config.eval.questions)
    config.eval.forgetting_text = _absolute(config.eval.forgetting_text)
    config.eval.models = [_absolute_model(m) for m in config.eval.models]
    if config.model.cache_dir:
        config.model.cache_dir = _absolute(config.model.cache_dir)
    return config


def config_reference_markdown() -> str:
    """The configuration reference (docs/configuration.md), generated from the types above."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `ray_entigraph/config.py` by `python -m ray_entigraph.config > docs/configuration.md`;",
        "a test fails when this file is out of date. Set any key in a YAML file or as `key.sub=value` on the",
        "command line.",
        "",
    ]

    def section(model: type[BaseModel], prefix: str, defaults: BaseModel | None) -> None:
        """`defaults`: the section as its parent builds it (extraction's sampling is not sampling's defaults)."""
        rows, subs = [], []
        for name, field in model.model_fields.items():
            ann = field.annotation
            default = (getattr(defaults, name) if defaults is not None
                       else field.get_default(call_default_factory=True))
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                subs.append((name, ann, default))
                continue
            rows.append(f"| `{prefix}{name}` | `{json.dumps(default)}` | {field.description or ''} |")
        if rows:
            lines.extend([f"## `{prefix.rstrip('.') or 'top level'}`", "", "| key | default | meaning |",
                          "|---|---|---|", *rows, ""])
        for name, sub, default in subs:
            section(sub, f"{prefix}{name}.", default)

    section(EntiGraphConfig, "", None)
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_reference_markdown(), end="")
