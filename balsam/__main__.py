"""``python -m balsam`` and the ``balsam`` command run the command line."""


def run() -> None:
    """The command line. A Ctrl-C while it is still starting (importing) exits 130 quietly, as it does later."""
    try:
        from balsam.cli import main
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    main()


if __name__ == "__main__":
    run()
