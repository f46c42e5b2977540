"""The policy service: the MLLM behind OpenAI tool calls for zoom, and /answer."""
