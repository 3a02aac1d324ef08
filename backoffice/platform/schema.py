"""Applying the Alembic migrations in ``migrations/`` (the schema's only author)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from backoffice.platform.config import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS_DIR = REPO_ROOT / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    # ConfigParser interpolation would read '%' in a password as a placeholder.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings.database_url), revision)


def downgrade(settings: Settings, revision: str) -> None:
    command.downgrade(alembic_config(settings.database_url), revision)


def new_revision(settings: Settings, message: str) -> None:
    """Autogenerate a revision from the models' difference to the database (for developers)."""
    command.revision(alembic_config(settings.database_url), message=message, autogenerate=True)
