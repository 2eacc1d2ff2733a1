"""``python -m lungnet.evaluation.crossval``: a doorway to `lungnet.commands.crossval` (``lungnet-crossval``,
``conf/crossval.yaml``);
nothing imports it."""

if __name__ == "__main__":
    from lungnet.commands.crossval import main

    main()
