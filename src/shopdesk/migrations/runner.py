"""Alembic, configured from code so the installed package carries its migrations."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

HERE = Path(__file__).resolve().parent


def config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    return cfg


def upgrade(revision: str = "head") -> None:
    command.upgrade(config(), revision)


def autogenerate(message: str) -> None:
    command.revision(config(), message=message, autogenerate=True)
