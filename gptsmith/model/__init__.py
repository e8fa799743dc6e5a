"""Stage 2, token ids -> next-token logits.

- ``config``: ``GPTConfig`` and its ``PRESETS``, without torch (``gpt`` re-exports them), so the
  command line's help and argument errors never wait for torch;
- ``memory``: estimates of the peak memory of a training step and of decoding, and the memory a
  device has available (``gptsmith info`` shows them; training and beam search check them);
- ``dropout``: ``Dropout``, the same function as ``nn.Dropout`` with a faster mask on the CPU;
- ``fast_linear``: ``FastLinear``, the ``nn.Linear`` every layer uses, with faster CPU inference
  kernels (one-row products, bf16 through oneDNN or fbgemm, opt-in int8 decoding, a padded head);
- ``fbgemm``: PyTorch's fbgemm kernels that ``FastLinear`` uses (bf16 weights packed in fp16,
  int8 weights), each probed once;
- ``attention``: the teaching ladder (self-attention step by step, causal, multi-head as a
  wrapper) beside the fused multi-head attention every caller gets, and the KV cache; tests prove
  each rung equal to the fused path.
- ``gpt``: ``GPTConfig`` and its presets, layer norm, GELU, feed-forward, transformer blocks and
  ``GPTModel``; ``summarize`` counts parameters and memory.
- ``weights``: safetensors in and out, shape checks, building a model from tensors.
- ``hf_files``: a Hugging Face folder's weight files (safetensors or ``.bin``, shards and index);
- ``hf_gpt2``: OpenAI's GPT-2 in Hugging Face format, imported and exported with exact parity.
- ``run_dir``: a run directory's ``latest`` pointer and ``checkpoints/step-N`` folders;
- ``checkpoint``: our model directory (config.json + model.safetensors), ``save_model`` and
  ``load_model(name_or_dir)``, the one way to load weights by directory or hub name.

May import: ``gptsmith.data`` and the top-level helpers.
"""
