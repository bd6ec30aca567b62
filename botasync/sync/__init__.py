"""The recordings sync: the syncer (walks, head pass, hot list), the diff that turns changes
into events, fingerprints, the seen-id set and the walk's progress bar. Imports the core,
`api` and `store`.
"""
