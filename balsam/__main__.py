"""``python -m balsam`` runs the command line."""

from balsam.cli import main

if __name__ == "__main__":
    main()
