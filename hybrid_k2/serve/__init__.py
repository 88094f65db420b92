"""`hybrid-k2 serve`: OpenAI- and Anthropic-compatible HTTP endpoints and a web chat over one loaded model.

schemas.py            OpenAI request bodies (pydantic; also the OpenAPI schema)
anthropic_schemas.py  Anthropic Messages request bodies
errors.py             errors in the route's API shape, FastAPI handlers (no stack trace ever reaches a client)
conversation.py       OpenAI messages -> template messages (tool-call id rewriting, reasoning alias)
anthropic.py          Anthropic request -> the equivalent OpenAI request; answer -> content blocks and events
grammar.py            llguidance grammars: JSON schema, K2 tool-call section; masks off the decode thread
constraints.py        grammar + thinking budget composed into one logits mask
prefix_cache.py       longest-common-prefix reuse across requests; conversations on the device, in host
                      RAM and on disk (the copies: runtime/kv_store.py)
scheduler.py          FIFO of jobs on the single model thread; queue limit; cancellation
engine.py             one request end to end on the model thread: prefill, decode, parse, events
answer.py             parser deltas -> one answer (parts, streamed pieces), shared by both APIs
responses.py          OpenAI response objects, chunks, usage
jobs.py               submit a job, read its events, cancel it when the client goes away
app.py                OpenAI routes, the web page, auth, body limits, SSE streaming, metrics
anthropic_routes.py   /v1/messages and /v1/messages/count_tokens
web/index.html        the web chat page served at /
See docs/serve.md for every route and parameter, docs/scale-out.md for the same API on vLLM / SGLang.
"""
