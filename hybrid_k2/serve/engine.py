"""One model behind the API: request planning (event loop) and generation (model thread).

`plan_chat` / `plan_completion` turn a validated request into a Plan: prompt ids, sampling values,
the output grammar, banned tokens. Every client mistake is an APIError raised here, before the
request queues. `run(plan, job)` executes a Plan on the model thread: it leases a Session from the
prefix cache (prefilling only what is not cached, in slices so a cancel lands quickly), runs the
chat package's `generate` (sampling, stops, thinking budget, parser) with our grammar as its
constraint, and emits the parser's deltas as they come.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from hybrid_k2.chat.engine import eos_ids
from hybrid_k2.serve.constraints import Constraints, ThinkingBudget
from hybrid_k2.serve.conversation import build_conversation
from hybrid_k2.serve.errors import APIError, bad_request
from hybrid_k2.serve.grammar import (GrammarCompiler, GrammarError, ToolSpec, json_grammar, json_or_tool_calls_grammar,
                                     lltokenizer_for, tool_calls_grammar)
from hybrid_k2.serve.metrics import Metrics
from hybrid_k2.serve.prefix_cache import PrefixCache
from hybrid_k2.serve.responses import Outcome, Started
from hybrid_k2.serve.schemas import ChatCompletionRequest, CompletionRequest

log = logging.getLogger("hybrid_k2.serve")

MAX_PARALLEL_CALLS = 8     # tool calls one constrained answer may hold
PREFILL_SLICE = 256        # prompt tokens per prefill call: the cancel check granularity
PROGRESS_EVERY = 8         # prefill slices between two progress lines in the log (2,048 tokens)
MAX_STOP_STRINGS = 8
# tool_choice required / named: reasoning ends (a `</think>` is forced) once it has used all of
# max_tokens but this reserve, so the forced call fits: half of max_tokens, at most FORCED_CALL_RESERVE.
FORCED_CALL_RESERVE = 1024
# A shorter common prefix (say, the default system prompt) is not worth cutting another
# conversation's cached session down to: a fresh session is used instead.
MIN_PREFIX_REUSE = 16


@dataclass
class ServeConfig:
    served_model_name: str = "kimi-k2-thinking"
    max_model_len: Optional[int] = None         # default: the planned context (--ctx)
    cache_tokens: Optional[int] = None          # cap on tokens of KV kept idle (None: bytes decide; 0: no cache)
    cache_sessions: int = 256                   # conversations kept (device + host RAM)
    kv_host_mem: Optional[int] = None           # bytes of idle conversations in host RAM (None: half the free RAM)
    kv_cache_dir: Optional[Path] = None         # disk tier: conversations survive eviction and restarts
    kv_disk_mem: Optional[int] = None           # bytes of files there (None: half the free disk space)
    thinking_token_budget: Optional[int] = None  # server default; a request may set its own
    reasoning_field: str = "reasoning_content"   # "reasoning_content" | "reasoning" | "both"
    default_temperature: Optional[float] = None  # None: generation_config.json, else 1.0
    default_top_p: Optional[float] = None


@dataclass
class Plan:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: Optional[int]
    stop: list[str]
    grammar: Optional[str] = None               # Lark text for llguidance
    thinking_budget: Optional[int] = None
    banned_ids: tuple[int, ...] = ()
    thinking: bool = True                       # the answer starts in reasoning (chat); False: raw text


class Engine:
    def __init__(self, model, tokenizer, template, config: ServeConfig, metrics: Optional[Metrics] = None,
                 generation_defaults: Optional[dict] = None):
        self.model, self.tokenizer, self.template, self.config = model, tokenizer, template, config
        self.metrics = metrics or Metrics()
        self.served_model_name = config.served_model_name
        self.reasoning_field = config.reasoning_field
        self.vocab_size = model.args.vocab_size
        self.max_model_len = config.max_model_len or model.ctx  # --ctx, else the planned context
        gen = generation_defaults or {}
        self.default_temperature = _first(config.default_temperature, gen.get("temperature"), 1.0)
        self.default_top_p = _first(config.default_top_p, gen.get("top_p"), 1.0)
        # generation_config.json's eos_token_id ends an answer too, as in the REPL (chat/engine.py).
        self.stop_ids = tokenizer.stop_ids | eos_ids(gen, tokenizer.vocab_size)
        self.cache_enabled = config.cache_tokens != 0
        self.cache = self._prefix_cache(config) if self.cache_enabled else None
        self._grammars: Optional[GrammarCompiler] = None
        self._grammar_lock = threading.Lock()
        self.created = int(time.time())
        self._request_ids = itertools.count(1)

    # --- model facts ---------------------------------------------------------------------------
    def model_card(self) -> dict[str, Any]:
        return {"id": self.served_model_name, "object": "model", "created": self.created, "owned_by": "hybrid-k2",
                "root": str(getattr(self.model, "path", "")), "parent": None, "max_model_len": self.max_model_len}

    def check_model(self, name: str) -> None:
        if name != self.served_model_name:
            raise APIError(404, f"the model '{name}' does not exist; this server serves '{self.served_model_name}'",
                           param="model", code="model_not_found")

    def _prefix_cache(self, config: ServeConfig) -> PrefixCache:
        from hybrid_k2.runtime.kv_store import KVStore

        def new_session():
            return self.model.new_session(self.max_model_len)

        store = KVStore(self.model, new_session, folder=config.kv_cache_dir)
        host = config.kv_host_mem if config.kv_host_mem is not None else _half_free_ram()
        disk = config.kv_disk_mem if config.kv_disk_mem is not None or config.kv_cache_dir is None \
            else _half_free_disk(config.kv_cache_dir)
        cache = PrefixCache(new_session, max_tokens=config.cache_tokens, max_sessions=max(1, config.cache_sessions),
                            min_reuse=MIN_PREFIX_REUSE, store=store, host_bytes=host, disk_bytes=disk)
        st = cache.stats()
        log.info("prefix cache: host RAM budget %s, %s", _gb(host),
                 f"disk {config.kv_cache_dir} budget {_gb(disk)}, {st.disk_files} conversations found ({_gb(st.disk_bytes)})"
                 if config.kv_cache_dir else "no disk tier")
        return cache

    def cache_gauges(self) -> dict[str, tuple[str, Callable[[], float]]]:
        if self.cache is None:
            return {}
        stats = self.cache.stats
        return {"prefix_cache_sessions": ("Idle conversations in the prefix cache (device + host RAM).", lambda: stats().sessions),
                "prefix_cache_tokens": ("Tokens of KV held by idle cached conversations.", lambda: stats().tokens),
                "prefix_cache_hits_total": ("Requests that reused a cached prefix.", lambda: stats().hits),
                "prefix_cache_misses_total": ("Requests that started from an empty session.", lambda: stats().misses),
                "prefix_cache_evictions_total": ("Conversations evicted from RAM (LRU).", lambda: stats().evictions),
                "prefix_cache_restores_total": ("Hits restored from host RAM or disk.", lambda: stats().restores),
                "prefix_cache_host_bytes": ("Bytes of KV of idle conversations in host RAM.", lambda: stats().host_bytes),
                "prefix_cache_disk_files": ("Conversation prefixes in --kv-cache-dir.", lambda: stats().disk_files),
                "prefix_cache_disk_bytes": ("Bytes of those files.", lambda: stats().disk_bytes)}

    @property
    def grammars(self) -> GrammarCompiler:
        # Built on first use: the llguidance tokenizer over a 163k vocabulary takes about a second.
        with self._grammar_lock:
            if self._grammars is None:
                self._grammars = GrammarCompiler(lltokenizer_for(self.tokenizer), logits_size=self.vocab_size)
            return self._grammars

    # --- planning (event loop side) ------------------------------------------------------------
    def count_chat_tokens(self, req: ChatCompletionRequest) -> int:
        """Prompt tokens of a chat request (what plan_chat would prefill), without the other checks."""
        conv = build_conversation(req.messages, req.tools)
        return len(self.template.render_ids(self.tokenizer, conv.messages, conv.tools))

    def plan_chat(self, req: ChatCompletionRequest) -> Plan:
        _refuse_unsupported(req)
        if req.logprobs or req.top_logprobs:
            raise bad_request("logprobs are not supported by this server", param="logprobs")
        conv = build_conversation(req.messages, req.tools)
        tools = {t.function.name: t.function for t in (req.tools or [])}
        choice = req.tool_choice if req.tool_choice is not None else ("auto" if tools else "none")
        if choice != "none" and choice != "auto" and not tools:
            raise bad_request("tool_choice needs a non-empty 'tools' list", param="tool_choice")
        if not isinstance(choice, str) and choice.function.name not in tools:
            raise bad_request(f"tool_choice names the function '{choice.function.name}', which is not in 'tools'",
                              param="tool_choice")
        prompt = self.template.render_ids(self.tokenizer, conv.messages, conv.tools)
        max_tokens = self._budget(len(prompt), req.max_completion_tokens or req.max_tokens, "messages")

        grammar = None
        wants_json = req.response_format is not None and req.response_format.type != "text"
        max_calls = 1 if req.parallel_tool_calls is False else MAX_PARALLEL_CALLS
        if choice == "required" or not isinstance(choice, str):
            picked = list(tools.values()) if choice == "required" else [tools[choice.function.name]]
            grammar = tool_calls_grammar([ToolSpec(f.name, f.parameters) for f in picked],
                                         first_index=conv.calls_so_far,
                                         max_calls=1 if not isinstance(choice, str) else max_calls)
        elif wants_json and choice == "auto":
            grammar = json_or_tool_calls_grammar(self._response_schema(req),
                                                 [ToolSpec(f.name, f.parameters) for f in tools.values()],
                                                 first_index=conv.calls_so_far, max_calls=max_calls)
        elif wants_json:
            grammar = json_grammar(self._response_schema(req))
        if grammar is not None:
            self._compile(grammar)
        # Without tools (or with tool_choice none) the model must not open a tool section.
        banned = (self.tokenizer.tool_calls_section_begin_id,) if choice == "none" else ()
        budget = req.thinking_token_budget if req.thinking_token_budget is not None else self.config.thinking_token_budget
        if choice == "required" or not isinstance(choice, str):
            room = max_tokens - min(max_tokens // 2, FORCED_CALL_RESERVE)
            budget = room if budget is None else min(budget, room)
        return Plan(prompt_ids=prompt, max_tokens=max_tokens, thinking_budget=budget, grammar=grammar,
                    banned_ids=banned, **self._sampling(req))

    def plan_completion(self, req: CompletionRequest) -> Plan:
        _refuse_unsupported(req)
        if req.echo or req.logprobs is not None or req.suffix is not None or (req.best_of or 1) != 1:
            raise bad_request("echo, logprobs, suffix and best_of are not supported by this server")
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise bad_request("one prompt per request (batches of prompts are not supported)", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            # A raw prompt is the caller's own K2 text: control-token names in it are control tokens.
            ids = self.tokenizer.encode(prompt, allow_special=True)
        else:
            ids = list(prompt)
            bad = [t for t in ids if not 0 <= t < self.tokenizer.vocab_size]
            if bad:
                raise bad_request(f"prompt token id {bad[0]} is outside the vocabulary "
                                  f"(0..{self.tokenizer.vocab_size - 1})", param="prompt")
        if not ids:
            raise bad_request("the prompt is empty", param="prompt")
        max_tokens = self._budget(len(ids), req.max_tokens, "prompt")
        return Plan(prompt_ids=ids, max_tokens=max_tokens, thinking=False, **self._sampling(req))

    def _budget(self, n_prompt: int, requested: Optional[int], what: str) -> int:
        limit = self.max_model_len
        if n_prompt >= limit:
            raise APIError(400, f"This model's maximum context length is {limit} tokens. However, your {what} "
                                f"resulted in {n_prompt} tokens. Please reduce the length of the {what}.",
                           param=what, code="context_length_exceeded")
        if requested is None:
            return limit - n_prompt
        if n_prompt + requested > limit:
            raise APIError(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                                f"{n_prompt + requested} tokens ({n_prompt} in the {what}, {requested} for the "
                                f"completion). Please reduce the length of the {what} or the completion.",
                           param="max_tokens", code="context_length_exceeded")
        return requested

    def _sampling(self, req) -> dict[str, Any]:
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > MAX_STOP_STRINGS or any(not s for s in stop):
            raise bad_request(f"stop takes at most {MAX_STOP_STRINGS} non-empty strings", param="stop")
        return {"temperature": _first(req.temperature, self.default_temperature),
                "top_p": _first(req.top_p, self.default_top_p),
                "top_k": req.top_k if req.top_k and req.top_k > 0 else 0,
                "seed": req.seed, "stop": stop}

    def _response_schema(self, req: ChatCompletionRequest) -> Optional[dict]:
        fmt = req.response_format
        if fmt.type == "json_object":
            return None
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise bad_request("response_format json_schema needs json_schema.schema", param="response_format")
        return fmt.json_schema.schema_

    def _compile(self, lark: str) -> None:
        try:
            self.grammars.matcher(lark)
        except GrammarError as e:
            raise bad_request(str(e), param="response_format") from None

    # --- generation (model thread) -------------------------------------------------------------
    def run(self, plan: Plan, job) -> None:
        """Generates one answer on the model thread; emits lists of parser Deltas, then an Outcome."""
        from hybrid_k2.chat.generate import generate
        from hybrid_k2.chat.sampling import SamplingParams

        rid = next(self._request_ids)
        t_start = time.perf_counter()
        lease = self.cache.acquire(plan.prompt_ids) if self.cache_enabled else None
        session = lease.session if lease else self.model.new_session(self.max_model_len)
        cached = lease.cached if lease else 0
        where = f" (from {lease.source} in {time.perf_counter() - t_start:.2f} s)" if lease and lease.source else ""
        log.info("request %d: %d prompt tokens, %d cached%s, %d to prefill", rid, len(plan.prompt_ids), cached,
                 where, len(plan.prompt_ids) - cached)
        job.emit(Started(cached_tokens=cached))
        constraints = self._constraints(plan)
        # With a grammar the budget lives in the constraint (it waits for a character boundary).
        budget_in_generate = plan.thinking_budget if plan.grammar is None else None
        outcome = Outcome(finish="cancelled", prompt_tokens=len(plan.prompt_ids), cached_tokens=cached,
                          completion_tokens=0)
        ok = False
        try:
            # Prefill all but the last prompt token here, in slices, so a cancel lands between
            # slices; generate() then finds them cached and runs the last one for the first logits.
            t0 = time.perf_counter()
            body = plan.prompt_ids[:-1]
            for n, i in enumerate(range(cached, len(body), PREFILL_SLICE), 1):
                if job.cancelled.is_set():
                    break
                session.prefill(body[i:i + PREFILL_SLICE], last_only=True)
                if n % PROGRESS_EVERY == 0:
                    _log_progress(rid, i + PREFILL_SLICE - cached, len(body) - cached, time.perf_counter() - t0)
            outcome.prefill_s = time.perf_counter() - t0
            if not job.cancelled.is_set():
                params = SamplingParams(temperature=plan.temperature, top_p=plan.top_p, top_k=plan.top_k,
                                        seed=plan.seed, max_tokens=plan.max_tokens, stop=tuple(plan.stop),
                                        thinking_budget=budget_in_generate)
                for event in generate(session, self.tokenizer, plan.prompt_ids, params, cancel=job.cancelled,
                                      constraint=constraints if constraints else None, thinking=plan.thinking,
                                      stop_ids=self.stop_ids):
                    if event.stats is not None:
                        st = event.stats
                        outcome.finish, outcome.output = st.finish_reason, event.output
                        outcome.completion_tokens, outcome.reasoning_tokens = st.completion_tokens, st.reasoning_tokens
                        outcome.prefill_s += st.prefill_seconds
                        outcome.decode_s = st.decode_seconds
                    if event.deltas:
                        job.emit(event.deltas)
            ok = True
        finally:
            if constraints.grammar is not None:
                outcome.mask_s = constraints.grammar.wait_seconds
            constraints.close()
            if lease is not None:
                self.cache.release(lease, keep=ok)
        prefilled = outcome.prompt_tokens - cached
        log.info("request %d %s: %d prompt tokens (%d cached), %d generated (%d reasoning); prefill %.2f s "
                 "(%.1f tok/s), decode %.2f s (%.2f tok/s)", rid, outcome.finish, outcome.prompt_tokens, cached,
                 outcome.completion_tokens, outcome.reasoning_tokens, outcome.prefill_s,
                 _rate(prefilled, outcome.prefill_s), outcome.decode_s, _rate(outcome.completion_tokens, outcome.decode_s))
        self.metrics.record_generation(prompt=outcome.prompt_tokens, cached=cached,
                                       completion=outcome.completion_tokens, reasoning=outcome.reasoning_tokens,
                                       prefill_s=outcome.prefill_s, decode_s=outcome.decode_s,
                                       mask_s=outcome.mask_s, cancelled=outcome.finish == "cancelled")
        job.emit(outcome)

    def _constraints(self, plan: Plan) -> Constraints:
        if plan.grammar is None:
            return Constraints(banned=plan.banned_ids, logits_size=self.vocab_size)
        prefs = []
        if plan.thinking_budget is not None:
            t = self.tokenizer
            prefs.append(ThinkingBudget(plan.thinking_budget, think_id=t.think_id, think_end_id=t.think_end_id,
                                        section_begin_id=t.tool_calls_section_begin_id, logits_size=self.vocab_size))
        return Constraints(self.grammars.constraint(plan.grammar), prefs, banned=plan.banned_ids,
                           logits_size=self.vocab_size)

    def close(self) -> None:
        if self._grammars is not None:
            self._grammars.close()
        if self.cache is not None:
            self.cache.close()  # writes the conversations still on the device to --kv-cache-dir


def _refuse_unsupported(req) -> None:
    if req.n != 1:
        raise bad_request("only n=1 is supported (one model, one answer at a time)", param="n")
    if req.presence_penalty or req.frequency_penalty:
        raise bad_request("presence_penalty and frequency_penalty are not supported (use 0)",
                          param="presence_penalty" if req.presence_penalty else "frequency_penalty")


def _log_progress(rid: int, done: int, total: int, seconds: float) -> None:
    done = min(done, total)
    rate = _rate(done, seconds)
    eta = (total - done) / rate if rate > 0 else 0.0
    log.info("request %d: prefill %d/%d tokens (%.0f%%), %.1f tok/s, ETA %.0f s", rid, done, total,
             100 * done / max(1, total), rate, eta)


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0


def _half_free_ram() -> Optional[int]:
    from hybrid_k2.runtime.machine import available_ram

    free = available_ram()
    return free // 2 if free else None


def _half_free_disk(folder: Path) -> Optional[int]:
    import shutil

    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(folder).free // 2
    except OSError:
        return None  # KVStore reports the unusable folder


def _gb(n: Optional[int]) -> str:
    return "unbounded" if n is None else f"{n / 1e9:.2f} GB"


def _first(*values):
    for v in values:
        if v is not None:
            return v
    return None


def load_engine(model_dir: Optional[Path], config: ServeConfig, *, device: str = "cpu",
                precision: str = "exact", runtime=None) -> Engine:
    """Loads checkpoint, tokenizer and chat template from one folder."""
    import json

    import hybrid_k2
    from hybrid_k2.chat.template import ChatTemplate
    from hybrid_k2.chat.tokenizer import Tokenizer

    if model_dir is None:
        from hybrid_k2.tiny import demo_model_path
        model_dir = demo_model_path()
    model = hybrid_k2.load(model_dir, device=device, precision=precision, runtime=runtime)
    tokenizer = Tokenizer.from_dir(model_dir)
    template = ChatTemplate.from_dir(model_dir)
    gen_file = Path(model_dir) / "generation_config.json"
    try:
        gen = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
    except (OSError, ValueError):
        gen = {}
    return Engine(model, tokenizer, template, config, generation_defaults=gen if isinstance(gen, dict) else {})
