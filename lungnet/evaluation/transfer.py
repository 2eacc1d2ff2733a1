"""``python -m lungnet.evaluation.transfer``: a doorway to `lungnet.commands.transfer` (``lungnet-transfer``,
``conf/transfer.yaml``);
nothing imports it."""

if __name__ == "__main__":
    from lungnet.commands.transfer import main

    main()
