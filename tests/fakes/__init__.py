"""Test doubles that run as real processes: ``vllm_server`` is a vLLM-faithful
OpenAI-compatible upstream for the policy's ``openai`` engine (docs/policy.md)."""
