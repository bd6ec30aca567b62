"""The recordings sync: the syncer's passes and their parts (the walker, the items, the
runs, the dialect learning, the estimate), the diff that turns changes into events,
fingerprints, the seen-id set and the walk's progress bar. Imports the core, `api` and
`store`.
"""
