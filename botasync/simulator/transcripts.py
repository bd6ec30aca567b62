"""The transcriptions and summaries of a world's recordings, made when first asked for.

A recording's own transcription is implied by the recording until someone reads it:
documented, by its `transcription_id`; deployed, by its status (processing, completed or
failed recordings have one, under an id derived from the seed, the recording id and how
often it was re-run). Reading one (through the API or `World.transcription*`)
*materialises* its recording: a small `TxnState` per transcription (status and times)
is kept from then on, while the text and the summaries stay pure functions of the seed
(`speech`). So a 100,000-recording world builds as fast as before and holds state only
for what was read or changed.

A materialised transcription whose status follows its recording completes (or fails)
when the recording does, at the world's `now`. `retranscribe` replaces a recording's own
transcription under a new id (the old one is gone: 404), `fail_transcription` and
`update_transcription` force a status, `add_transcription` (deployed) lists another one
beside it. Summaries belong to completed transcriptions and move through pending,
processing and completed (or failed) by the clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from botasync.simulator import speech
from botasync.simulator.clock import iso_ms, parse_iso_ms
from botasync.simulator.speech import TERMINAL, TXN_STATUSES, InvalidKeyset

Item = dict[str, Any]
HAS_TRANSCRIPT = ("processing", "completed", "failed")  # deployed recording statuses
FAIL_RATE = 0.04  # completed recordings whose transcription failed
MOST_SUMMARIES = {"documented": 1, "deployed": 2}  # documented links one by `summary_id`

__all__ = ["InvalidKeyset", "Transcripts", "TxnState"]


@dataclass(slots=True)
class TxnState:
    """What changes about a transcription once it was seen: its status and times."""

    id: str
    rec_id: str
    own: bool  # the recording's own (what retranscribe replaces), not one added beside it
    status: str
    created_ms: int
    started_ms: int | None
    ended_ms: int | None  # when it completed or failed
    updated_ms: int
    duration_s: float | None  # the recording's length when it was made (fits the segments)
    follows: bool = True  # its status follows the recording's (False once forced)
    error: str | None = None
    forced: dict[str, Any] = field(default_factory=dict)  # raw fields served as given

    def finish(self, status: str, now_ms: int, error: str | None = None) -> None:
        """Move to `status` now (a terminal one stamps its end)."""
        if status != "pending" and self.started_ms is None:
            self.started_ms = max(self.created_ms, now_ms)
        if status in TERMINAL:
            self.ended_ms = max(self.started_ms or self.created_ms, now_ms)
        else:
            self.ended_ms = None
        self.status = status
        self.error = error if status == "failed" else None
        self.updated_ms = max(self.updated_ms + 1, now_ms, self.ended_ms or 0)


class Transcripts:
    """Transcriptions and summaries of one world; the world calls the `recording_*` hooks."""

    def __init__(
        self, seed: int, dialect: Literal["documented", "deployed"], project_id: str,
        load: Callable[[str], Item | None], now_ms: Callable[[], int],
        owner: Mapping[str, str],
    ) -> None:
        self.seed = seed
        self.dialect = dialect
        self.project_id = project_id
        self._load = load  # a recording as stored, or None
        self._now_ms = now_ms
        self._owner = owner  # documented: transcription_id -> recording id (kept by the world)
        self._states: dict[str, TxnState] = {}
        self._by_rec: dict[str, list[str]] = {}  # materialised recordings -> their ids
        self._runs: dict[str, int] = {}  # recording id -> how often its own was replaced
        self._txn_of_summary: dict[str, str] = {}
        self._found: dict[str, str] = {}  # deployed: ids handed out -> recording id

    def __len__(self) -> int:
        """How many transcriptions are held (made when first read or changed)."""
        return len(self._states)

    @property
    def deployed(self) -> bool:
        """Whether the world speaks the deployed dialect."""
        return self.dialect == "deployed"

    def _key(self, txn_id: str) -> str:
        return f"{self.seed}:{txn_id}"

    # -- what a recording implies ----------------------------------------------------------

    def _own_id(self, rec_id: str, rec: Item) -> str | None:
        """The id of the recording's own transcription as the recording implies it."""
        if not self.deployed:
            txn_id = rec.get("transcription_id")
            return txn_id if isinstance(txn_id, str) and txn_id else None
        if rec.get("status") not in HAS_TRANSCRIPT:
            return None
        return self._deployed_id(rec_id, self._runs.get(rec_id, 0))

    def _deployed_id(self, rec_id: str, run: int) -> str:
        return speech.derived_id("txn_", f"{self.seed}:{rec_id}:run:{run}")

    def _target(self, txn_id: str, rec: Item) -> str | None:
        """The terminal status a following transcription takes, or None while in flight."""
        status = rec.get("status")
        if status == "completed":
            return "failed" if speech.fraction(self._key(txn_id) + ":fail") < FAIL_RATE else (
                "completed")
        if status in ("failed", "integrity_failure"):
            return "failed"
        return None

    def _duration_s(self, rec: Item) -> float | None:
        if self.deployed:
            raw = rec.get("duration_seconds")
            return float(raw) if isinstance(raw, int) and raw > 0 else None
        raw = rec.get("duration_ms")
        return raw / 1000 if isinstance(raw, int) and raw > 0 else None

    def _derive(self, txn_id: str, rec_id: str, rec: Item, *, born_now: bool) -> TxnState:
        """A state for the recording's own transcription, consistent with the recording."""
        now = self._now_ms()
        rec_ms = parse_iso_ms(rec.get("created_at")) or now
        ceiling = max(now, rec_ms)
        coin = speech.fraction(self._key(txn_id) + ":times")
        created = now if born_now else min(ceiling, rec_ms + 5_000 + int(coin * 115_000))
        state = TxnState(txn_id, rec_id, own=True, status="pending", created_ms=created,
                         started_ms=None, ended_ms=None, updated_ms=created,
                         duration_s=self._duration_s(rec))
        target = self._target(txn_id, rec)
        if target is None:
            if coin < 0.6:  # in flight: most have started
                state.started_ms = min(ceiling, created + 1000 + int(coin * 9000))
                state.status, state.updated_ms = "processing", state.started_ms
            return state
        started = min(ceiling, created + 1000 + int(coin * 9000))
        ended = min(ceiling, started + 10_000 + int(coin * 590_000))
        state.status, state.started_ms, state.ended_ms, state.updated_ms = (
            target, started, ended, ended)
        if target == "failed":
            state.error = self._error_text(txn_id)
        return state

    def _error_text(self, txn_id: str) -> str:
        errors = speech.TXN_ERRORS
        return errors[int(speech.fraction(self._key(txn_id) + ":error") * len(errors))]

    # -- materialising ---------------------------------------------------------------------

    def _materialise(self, rec_id: str) -> list[TxnState] | None:
        """The states of a recording's transcriptions (made now if never seen), or None."""
        rec = self._load(rec_id)
        if rec is None:
            return None
        if rec_id not in self._by_rec:
            own = self._own_id(rec_id, rec)
            self._by_rec[rec_id] = []
            if own is not None:
                self._keep(self._derive(own, rec_id, rec, born_now=False))
        return [self._states[t] for t in self._by_rec[rec_id]]

    def _keep(self, state: TxnState) -> TxnState:
        self._states[state.id] = state
        self._by_rec.setdefault(state.rec_id, []).append(state.id)
        if self.deployed:
            self._found[state.id] = state.rec_id
        return state

    def _drop(self, txn_id: str) -> None:
        state = self._states.pop(txn_id, None)
        if state is not None:
            self._by_rec[state.rec_id].remove(txn_id)
            self._found.pop(txn_id, None)

    def _state(self, txn_id: str) -> TxnState | None:
        """A live transcription's state by id (materialising its recording), or None."""
        state = self._states.get(txn_id)
        if state is not None:
            return state
        rec_id = self._found.get(txn_id) if self.deployed else self._owner.get(txn_id)
        if rec_id is None or rec_id in self._by_rec:
            return None  # unknown, or its recording was seen without it (replaced)
        self._materialise(rec_id)
        return self._states.get(txn_id)

    # -- hooks the world calls ---------------------------------------------------------------

    def recording_changed(self, rec_id: str, old: Item, new: Item) -> None:
        """A recording changed: its transcriptions follow (only if any were seen)."""
        states = self._by_rec.get(rec_id)
        if states is None:
            return  # never seen: what it implies is worked out when it is first read
        own = self._own_id(rec_id, new)
        if not self.deployed:  # the recording's transcription_id names its own
            for state in [self._states[t] for t in states]:
                if state.own and state.id != own:
                    self._drop(state.id)
        if own is not None and not any(self._states[t].own for t in states):
            self._keep(self._derive(own, rec_id, new, born_now=True))
        now = self._now_ms()
        for state in [self._states[t] for t in self._by_rec[rec_id]]:
            target = self._target(state.id, new)
            if state.follows and target is not None and state.status not in TERMINAL:
                state.finish(target, now, self._error_text(state.id))

    def recording_removed(self, rec_id: str) -> None:
        """A recording was deleted: its transcriptions and summaries are gone (404)."""
        for txn_id in list(self._by_rec.pop(rec_id, [])):
            self._states.pop(txn_id, None)
            self._found.pop(txn_id, None)

    # -- changes ---------------------------------------------------------------------------------

    def next_own_id(self, rec_id: str) -> str:
        """The id the recording's own transcription gets when it is re-run next."""
        self._materialise(rec_id)
        run = self._runs.get(rec_id, 0) + 1
        self._runs[rec_id] = run
        if self.deployed:
            return self._deployed_id(rec_id, run)
        return speech.derived_id("txn_", f"{self.seed}:{rec_id}:rerun:{run}")

    def replace_own(self, rec_id: str, new_id: str, status: str) -> TxnState:
        """The recording's own transcription is now `new_id`, made now in `status`; the old
        one is dropped. Documented: the caller has set the recording's `transcription_id`
        to `new_id` already (so `recording_changed` made its state)."""
        states = self._materialise(rec_id)
        if states is None:
            raise KeyError(rec_id)
        for old in states:
            if old.own and old.id != new_id:
                self._drop(old.id)
        state = self._states.get(new_id)
        if state is None:
            rec = self._load(rec_id) or {}
            state = self._keep(self._derive(new_id, rec_id, rec, born_now=True))
        self.force(state, status)
        return state

    def add(self, rec_id: str, status: str) -> TxnState:
        """Deployed: another transcription of the recording, listed beside its own."""
        states = self._materialise(rec_id)
        if states is None:
            raise KeyError(rec_id)
        n = self._runs.get(f"{rec_id}:added", 0)
        self._runs[f"{rec_id}:added"] = n + 1
        now = self._now_ms()
        rec = self._load(rec_id) or {}
        state = self._keep(TxnState(
            speech.derived_id("txn_", f"{self.seed}:{rec_id}:added:{n}"), rec_id, own=False,
            status="pending", created_ms=now, started_ms=None, ended_ms=None, updated_ms=now,
            duration_s=self._duration_s(rec), follows=False))
        self.force(state, status)
        return state

    def own_state(self, rec_id: str) -> TxnState | None:
        """The recording's own transcription (materialised), or None; KeyError if no recording."""
        states = self._materialise(rec_id)
        if states is None:
            raise KeyError(rec_id)
        return next((s for s in states if s.own), None)

    def force(self, state: TxnState, status: str, error: str | None = None) -> None:
        """Set a transcription's status now; it no longer follows its recording."""
        if status not in TXN_STATUSES:
            raise ValueError(f"status must be one of {', '.join(TXN_STATUSES)}, got {status!r}")
        state.follows = False
        if status == state.status and status in TERMINAL and error is None:
            return
        state.finish(status, self._now_ms(), error or self._error_text(state.id))

    def update(self, txn_id: str, fields: dict[str, Any]) -> TxnState:
        """Force a transcription's status (`status`, `error`); other fields are served as
        given. KeyError when there is no such transcription."""
        state = self._state(txn_id)
        if state is None:
            raise KeyError(txn_id)
        rest = dict(fields)
        status, error = rest.pop("status", None), rest.pop("error", None)
        if status is not None or error is not None:
            self.force(state, str(status or state.status), None if error is None else str(error))
        state.forced.update(rest)
        state.updated_ms = max(state.updated_ms + 1, self._now_ms())
        return state

    # -- serving ------------------------------------------------------------------------------

    def _summaries(self, state: TxnState) -> list[speech.SummarySpec]:
        if state.status != "completed" or state.ended_ms is None:
            return []
        specs = speech.summary_specs(self._key(state.id), state.id, state.ended_ms,
                                     most=MOST_SUMMARIES[self.dialect])
        for spec in specs:
            self._txn_of_summary[spec.id] = state.id
        return specs

    def _speakers(self, state: TxnState) -> list[str]:
        segments = speech.content(self._key(state.id), state.duration_s).segments
        return sorted({s.speaker for s in segments if s.speaker is not None})

    def served(self, state: TxnState) -> Item:
        """A transcription as the world's dialect serves it."""
        done = state.status == "completed"
        words = speech.content(self._key(state.id), state.duration_s)
        segments = speech.segment_objects(words.segments, confidence=not self.deployed)
        error: Any = None
        if state.status == "failed":
            message = state.error or self._error_text(state.id)
            error = message if self.deployed else {"code": "transcription_failed",
                                                   "message": message}
        item: Item = {"id": state.id, "recording_id": state.rec_id, "status": state.status,
                      "language": words.language if done else None, "provider": words.provider,
                      "full_text" if self.deployed else "text": words.text if done else None,
                      "segments": segments if done else None,
                      "word_count": words.word_count if done else None, "error": error}
        if not self.deployed:
            specs = self._summaries(state)
            item["summary_id"] = specs[0].id if specs else None
        item.update({
            "created_at": iso_ms(state.created_ms), "updated_at": iso_ms(state.updated_ms),
            "started_at": None if state.started_ms is None else iso_ms(state.started_ms),
            "completed_at": iso_ms(state.ended_ms) if done and state.ended_ms else None,
        })
        item.update(orjson.loads(orjson.dumps(state.forced)))
        return item

    def of_recording(self, rec_id: str) -> list[Item] | None:
        """A recording's transcriptions newest first, served; None for no such recording."""
        states = self._materialise(rec_id)
        if states is None:
            return None
        ordered = sorted(states, key=lambda s: (s.created_ms, s.id), reverse=True)
        return [self.served(s) for s in ordered]

    def get(self, txn_id: str) -> Item | None:
        """One transcription served, or None (unknown, replaced, or its recording deleted)."""
        state = self._state(txn_id)
        return None if state is None else self.served(state)

    def _summary_specs_of(self, txn_id: str) -> tuple[TxnState, list[speech.SummarySpec]] | None:
        state = self._state(txn_id)
        return None if state is None else (state, self._summaries(state))

    def summaries_of(self, txn_id: str) -> list[Item] | None:
        """A transcription's summaries newest first; None for no such transcription."""
        found = self._summary_specs_of(txn_id)
        if found is None:
            return None
        state, specs = found
        now, speakers = self._now_ms(), self._speakers(state)
        ordered = sorted(specs, key=lambda s: (s.created_ms, s.id), reverse=True)
        return [speech.summary_object(s, now, self.project_id, speakers,
                                      plain_errors=self.deployed) for s in ordered]

    def summary(self, sum_id: str) -> Item | None:
        """One summary served, or None (unknown, or its transcription is gone)."""
        txn_id = self._txn_of_summary.get(sum_id)
        found = None if txn_id is None else self._summary_specs_of(txn_id)
        if found is None:
            return None
        state, specs = found
        spec = next((s for s in specs if s.id == sum_id), None)
        if spec is None:
            return None
        return speech.summary_object(spec, self._now_ms(), self.project_id,
                                     self._speakers(state), plain_errors=self.deployed)

    def page(self, items: list[Item] | None, limit: int, cursor: str | None) -> bytes:
        """A keyset page of transcriptions or summaries (newest first): `{data, has_more,
        next_cursor}`, the cursor absent on the last page. InvalidKeyset for a bad cursor."""
        rows = [(parse_iso_ms(i["created_at"]) or 0, str(i["id"]), i) for i in items or []]
        if cursor is not None:
            after = speech.decode_keyset(cursor)
            rows = [r for r in rows if (r[0], r[1]) < after]
        body: Item = {"data": [r[2] for r in rows[:limit]], "has_more": len(rows) > limit}
        if len(rows) > limit:
            last = rows[limit - 1]
            body["next_cursor"] = speech.encode_keyset(last[0], last[1])
        return orjson.dumps(body)
