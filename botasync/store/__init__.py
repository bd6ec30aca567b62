"""The database: the SQLite store and its migrations, the read queries, snapshots, retention,
and the SQL of the transcript tables and their queue. Imports the core and `api` (models).
"""
