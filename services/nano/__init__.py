"""The nano model's recipe: its builder (a small Qwen2.5-VL with phrase and coordinate
tokens), the loop-rendered training episodes and the staged training that made the
committed weights (``magsrl nano train``). It sits beside the services because it draws
scenes from the data layer and sizes crops as the magnifier does; the weights themselves
are resolved from ``magsrl.models.nano_checkpoint``."""
