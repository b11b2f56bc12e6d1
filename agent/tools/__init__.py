"""Commands beside the runtime: demo, evaluate and replay, quantize, docs, schema, the embedded
broker and model training. Nothing in the hot path imports from here."""
