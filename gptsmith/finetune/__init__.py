"""Stage 5a, a pretrained model -> a model that does one job: classification, following
instructions, and LoRA adapters that both can use. Lowest first:

- ``lora``: ``LoRALinear``, ``apply_lora``, ``merge_lora``, adapters saved and loaded alone;
- ``base``: what every fine-tune shares: ``load_base`` (--checkpoint/--model), ``set_trainable``
  (head, last-blocks:N, all), ``StepRunner`` (autocast, fused AdamW, schedule, clipping, a stop
  on a non-finite loss), the output directory;
- ``records``: JSON arrays and JSONL files of records, read one way for both kinds of data;
- ``class_data``: labelled texts from CSV/TSV/JSONL/JSON, balancing, stratified splits;
- ``class_model``: ``GPTClassifier`` (a head on the last real token) and its dynamic batches;
- ``class_eval``: loss, accuracy, confusion matrix, the loss/accuracy plot;
- ``classifier``: a classifier directory saved and loaded, ``Classifier.predict``;
- ``classify``: ``finetune_classifier``, from a data file to a tested classifier;
- ``instruct_data``: Alpaca/chat records, the split, batching with padding the loss ignores;
- ``instruct``: the instruction-tuning loop, reference loss, test answers;
- ``judge``: scores from a judge model over an OpenAI-compatible endpoint.

May import: ``gptsmith.train``, ``gptsmith.generate``, ``gptsmith.model``, ``gptsmith.data`` and
the top-level helpers; never ``gptsmith.explain``, ``gptsmith.serve`` or ``gptsmith.cli``.
"""
