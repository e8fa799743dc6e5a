"""Stage 2, token ids -> next-token logits.

- ``attention``: the teaching ladder (self-attention step by step, causal, multi-head as a
  wrapper) beside the fused multi-head attention every caller gets, and the KV cache; tests prove
  each rung equal to the fused path.
- ``gpt``: ``GPTConfig`` and its presets, layer norm, GELU, feed-forward, transformer blocks and
  ``GPTModel``; ``summarize`` counts parameters and memory.
- ``weights``: safetensors in and out, shape checks, building a model from tensors.
- ``hf_gpt2``: OpenAI's GPT-2 in Hugging Face format, imported and exported with exact parity.
- ``checkpoint``: our model directory (config.json + model.safetensors), ``save_model`` and
  ``load_model(name_or_dir)``, the one way to load weights by directory or hub name.

May import: ``gptsmith.data`` and the top-level helpers.
"""
