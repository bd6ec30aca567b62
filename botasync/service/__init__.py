"""The running service: the app that wires the parts, the daemon, the monitor (metrics and
health over HTTP), `status` and the demo. Imports anything but `cli`.
"""
