"""The trainer service: GRPO with rollouts through Redis. Not built yet (issue 5)."""
