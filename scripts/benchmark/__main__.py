"""``python -m scripts.benchmark``: what ``scripts/bench`` runs."""

if __name__ == "__main__":
    # Imported only when run: the spawned load and echo processes re-import this module (as __mp_main__)
    # and must not load the servers' dependencies that the coordinator needs.
    from .cli import main

    main()
