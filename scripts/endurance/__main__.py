"""``python -m scripts.endurance``: what ``scripts/soak`` runs."""

from .cli import main

if __name__ == "__main__":
    main()
