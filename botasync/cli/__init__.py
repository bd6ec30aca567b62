"""The command line (click + rich). Imports anything.
"""
