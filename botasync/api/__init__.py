"""The Bota API: the HTTP client, the request budget, the two dialects, paging, and the
recording and transcription models read from its answers. Imports only the core modules.
"""
