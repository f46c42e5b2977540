"""Test doubles. ``episode``: in-process fakes of an engine, the policy and the magnifier for
the zoom loop, the rollout worker and the run loop. ``vllm_server``: a vLLM-faithful
OpenAI-compatible upstream, run as a real process, for the policy's ``openai`` engine
(docs/policy.md)."""
