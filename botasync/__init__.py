"""botasync: a local SQLite mirror of a Bota project's recordings, with events."""

__version__ = "0.1.0"
