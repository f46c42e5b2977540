"""Generation engines behind one interface: ``hf`` (transformers, in-process) and ``openai``
(an upstream OpenAI-compatible server such as vLLM)."""
