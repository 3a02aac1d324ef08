"""``python -m scripts.benchmark``: what ``scripts/bench`` runs. (Spawned load processes do not re-import
a package's ``__main__``, so importing the coordinator's modules here costs them nothing.)"""

from .cli import main

if __name__ == "__main__":
    main()
