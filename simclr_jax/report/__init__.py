"""The comparison report of scripts/compare.sh (comparison: tables and plots) and the pictures of
an encoder's embedding (pictures: the map and the retrieval grid).

    comparison.write_report(workdir, runs, pretrain, fractions)   # report.md and its plots
    pictures.pictures_of_run(run_workdir)                          # embedding map and retrieval grid
"""
