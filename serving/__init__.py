"""End-to-end serving: a lean LLM serving engine (Llama in fp16, paged KV cache, Sarathi and vLLM
schedulers, pluggable attention backends) and a discrete-event simulator that shares its scheduler
and metrics code. Entry point: ``python -m serving.run CONFIG.yaml --out DIR [--smoke]``."""
