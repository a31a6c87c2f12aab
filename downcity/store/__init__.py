"""Storage: the schema, the `Database` entry point and its migrations."""

from downcity.store.database import Database

__all__ = ["Database"]
