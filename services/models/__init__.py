"""Model loading shared by the policy's engine and the learner: processors, the offline tiny
model, supervised fine-tuning, device and dtype choice."""
