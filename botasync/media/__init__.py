"""Media files: the downloader, its admin commands, its progress bar and the files on disk.
Imports the core, `api` and `store`.
"""
