"""Stage 5b, a model -> answers over HTTP: an OpenAI-compatible API with continuous batching, and
a web playground.

Lowest first (each module imports only those above it in this list):

- ``batch``: ``BatchCache``, the KV cache of a running batch whose rows join and leave;
- ``engine``: ``Engine``, the one decode loop that owns the model (continuous batching), with
  ``SamplingParams`` and the ``Chunk`` s it emits per request;
- ``protocol``: OpenAI's request bodies checked into ``SamplingParams`` (``APIError``: a 4xx in
  OpenAI's error shape that names the field);
- ``responses``: OpenAI's answers, stream chunks and usage;
- ``chat_prompt``: chat messages -> one prompt with the model's template (``generate/chat.py``);
- ``app``: ``create_app`` (FastAPI routes, API key, caps) and ``ServerSettings``;
- ``server``: ``run_server`` (uvicorn, graceful SIGTERM) and ``ServerThread`` (tests, benchmarks).

``static/playground.html`` is the web page served at ``/``.

May import: ``gptsmith.train``, ``gptsmith.generate``, ``gptsmith.model``, ``gptsmith.data`` and
the top-level helpers; never ``gptsmith.finetune``, ``gptsmith.explain`` or ``gptsmith.cli``.
"""
