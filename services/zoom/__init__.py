"""The zoom core: everything one zoom episode needs, below the services.

Output parsing (tags and tool calls), multiple-choice normalisation, box rules, model
families and their coordinate conventions, the engine protocol, and the loop. The policy's
``/answer``, the rollout worker, eval and the judge's pass-rate method all run episodes
through :class:`magsrl.zoom.loop.ZoomLoop`; none of them imports ``magsrl.policy``.
"""
