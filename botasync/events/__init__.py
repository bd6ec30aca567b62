"""Delivering events: the outbox dispatcher, the handlers (webhook, command, python, NATS)
and webhook signing. Imports the core, `api` and `store`.
"""
