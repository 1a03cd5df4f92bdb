"""The project's tiny models, built as real ONNX graphs for the tests, the benchmarks and the demo.

- :mod:`.tinylm`: a character-level chat model (an n-gram table as embedding + linear head);
- :mod:`.tinygpt`: a GPT-style decoder with a KV cache, laid out like an Optimum export;
- :mod:`.tinyembed`: a BERT-style text encoder, laid out like a sentence-transformers export.

Each writes a model repository folder that ``clawdbot-runtime serve`` loads like any other
model; ``clawdbot-demo-model`` (:mod:`.cli`) writes one from the command line.
"""
