"""Super-resolution networks for the magnifier: ncnn reader, torch archs, converters, weights.

Modules: `ncnn` (format reader), `archs` (torch networks), `convert` (ncnn -> state_dict),
`weights` (backend registry, `prepare_weights`, `load_checkpoint`, `build_network`).
"""
