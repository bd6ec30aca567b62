#!/bin/sh
# The command handler of the dispatch bench: append the event id (the cheapest real program).
printf '%s\n' "$BOTASYNC_EVENT_ID" >> "$BENCH_EVENTS_OUT"
