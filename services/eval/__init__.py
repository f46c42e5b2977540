"""Evaluation harness: the paper's ablation (zoom with SR, bicubic, plain crops, no zoom) on any
dataset the loaders read, with paired statistics and a report."""
