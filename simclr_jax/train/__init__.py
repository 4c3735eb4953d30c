"""Training: the train state and the step every stage shares (step), the loop around it (loop)
with its periodic pieces (window: logs; saver: checkpoints; evaluation: the evaluators' rounds),
optimisers and schedules (optim), Orbax checkpoints, the compilation cache and the metrics files.
Stands on core, data, models and evals.

    results = loop.run(loop.Task(state, step_fn, inputs, evaluators, infer, summarize), workdir, settings)
"""
