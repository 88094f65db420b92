"""Everything between a person's keystrokes and the model's token ids.

tokenizer.py  K2's tiktoken BPE + 256 special slots, streaming detokenisation
template.py   chat template: the checkpoint's jinja file, or our built-in renderer of the same format
parser.py     reasoning / content / tool-call parsing of model output, streaming and not
sampling.py   SamplingParams and the per-token sampler
generate.py   the decode loop: stops, budgets, cancellation, constraint hook, prefix reuse
context.py    what to do when a conversation outgrows the context window
engine.py     model + tokenizer + template wired together for one conversation
repl.py       the `hybrid-k2 chat` terminal (display.py: its output; calculator.py: its built-in tool)
See docs/chat.md for the public API.
"""
