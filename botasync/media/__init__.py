"""Media files: the downloader and its parts (queue, urls, transfer, ledger, orphans), its
admin commands, its progress bar and the files on disk. Imports the core, `api` and `store`.
"""
