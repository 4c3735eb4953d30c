"""The stages config.stage names: pretrain (any method), classify (finetune, linear_eval,
supervised) and distill, each a build_task handed to runner.train_and_evaluate, which prepares
the data once, checks the workdir (workdir) and runs train.loop. Stands on everything below the
command line.

    results = pretrain.train_and_evaluate(config, workdir)
"""
