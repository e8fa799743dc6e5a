"""Stage 5c, a model and a text -> pictures of each step: tokens, embeddings, attention, next-token
probabilities, random versus trained weights.

Lowest first (a module imports only those above it in this list):

- ``tokens``: the text's pieces and ids, and the simple word tokenizer's view;
- ``embeddings``: shapes, a 2-D PCA of token vectors, nearest neighbours by cosine;
- ``attention``: the weights of every layer and head, recomputed from hooks on the fast path and
  checked against the model's real output;
- ``next_token``: top-k at each position, temperature, loss and perplexity;
- ``compare``: the same text under freshly initialised weights;
- ``pictures``: the PNGs (matplotlib, Agg); ``text`` and ``html``: the terminal and page views;
- ``report``: ``explain(model, tokenizer, text) -> ExplainReport`` (``to_text``/``to_json``/``to_html``).

May import: ``gptsmith.train``, ``gptsmith.generate``, ``gptsmith.model``, ``gptsmith.data`` and
the top-level helpers; never ``gptsmith.finetune``, ``gptsmith.serve`` or ``gptsmith.cli``.
"""
