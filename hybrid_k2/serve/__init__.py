"""`hybrid-k2 serve`: an OpenAI-compatible HTTP endpoint over one loaded model.

schemas.py       request bodies (pydantic; also the OpenAPI schema)
errors.py        OpenAI-shaped errors, FastAPI handlers (no stack trace ever reaches a client)
conversation.py  OpenAI messages -> template messages (tool-call id rewriting, reasoning alias)
grammar.py       llguidance grammars: JSON schema, K2 tool-call section; masks off the decode thread
constraints.py   grammar + thinking budget composed into one logits mask
prefix_cache.py  LRU of Sessions; longest-common-prefix reuse across requests
scheduler.py     FIFO of jobs on the single model thread; queue limit; cancellation
engine.py        one request end to end on the model thread: prefill, decode, parse, events
app.py           FastAPI routes, auth, body limits, SSE streaming, metrics
See docs/scale-out.md for running the same API on vLLM / SGLang clusters.
"""
