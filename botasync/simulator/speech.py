"""What was said: pure builders of transcript content, summaries and their served objects.

Everything here is a function of a string key (the world's seed and an id), so a
transcript is the same on every read and in every run, and none is made before it is
asked for: a world of 100,000 recordings holds no text at all until a client reads one.
Times are Unix milliseconds in, ISO strings out, as in `archive`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import random
import re
from dataclasses import dataclass
from typing import Any

from botasync.simulator.archive import ALNUM
from botasync.simulator.clock import iso_ms

TXN_STATUSES = ("pending", "processing", "completed", "failed")
TERMINAL = ("completed", "failed")
PROVIDERS = ("deepgram", "deepgram", "whisper", "assemblyai", "elevenlabs")
SUMMARY_PROVIDERS = ("openai", "anthropic")
TEMPLATES = ("meeting-notes", "action-items", "sales-call", "interview-debrief")
CUSTOM_PROMPTS = ("List every decision and who made it.",
                  "Summarise the customer's concerns in three bullets.")
LANGUAGE_WEIGHTS = {"en": 70, "de": 10, "fr": 10, "es": 10}
TXN_ERRORS = ("Audio could not be decoded", "Transcription provider timed out",
              "No speech detected in the audio")
SUMMARY_ERRORS = ("Summary provider timed out", "Transcript too short to summarise")
KEYSET_RE = re.compile(r"k1\.([0-9]{1,16})\.([A-Za-z0-9_]{1,140})")
_TO_ALNUM = bytes((ALNUM * 5)[:256], "ascii")
WHO = ("Jane", "Ravi", "Mei", "Lukas", "Amara", "Sofia", "José", "Zoë")
ORG = ("Acme", "Globex", "Initech", "Hooli", "Müller GmbH", "Café Lumière")
SENTENCES: dict[str, tuple[str, ...]] = {
    "en": (
        "Thanks for joining, everyone.", "Can you hear me okay?",
        "Let's start with the numbers from last week.",
        "We shipped the new onboarding flow on Tuesday.",
        "{who} said the customer wants a demo before Friday.",
        "Honestly, I'm not sure that's realistic.", "That's a fair point.",
        "The budget for Q3 is about €40,000, give or take.",
        "I'll send the revised quote to {org} tomorrow.",
        "Wait — did they sign the contract or not?",
        "They called it \"the best pilot we've run\", which is nice to hear.",
        "We need a decision by the 15th.", "Could we move the review to Thursday?",
        "Our team in São Paulo is already testing it.", "I think the risk is mostly on our side.",
        "Let me share my screen.", "Okay, next item.",
        "The café near the Zürich office does great coffee, by the way.",
        "Who owns the follow-up with {org}?", "{who} will take that one.",
        "Support tickets went down by 12% after the fix.",
        "It's a naïve estimate, but it's a start.", "Right, so what's blocking us?",
        "Let's park that for now.", "I'll write it up and share the notes.",
        "Any questions before we wrap up?", "Great, thanks — talk soon!",
    ),
    "de": (
        "Guten Morgen zusammen.", "Können wir mit den Zahlen anfangen?",
        "{who} kümmert sich um das Angebot für {org}.", "Das Budget liegt bei etwa 40.000 €.",
        "Ich schicke die Notizen heute Nachmittag.", "Gibt es noch Fragen?",
        "Das müssen wir bis Freitag klären.", "Danke, bis nächste Woche!",
    ),
    "fr": (
        "Bonjour à tous.", "On commence par le point sur le budget ?",
        "{who} s'occupe du devis pour {org}.", "C'est une très bonne idée.",
        "Il faut décider avant vendredi.", "Je vous envoie le compte rendu ce soir.",
        "Des questions ?", "Merci, à la semaine prochaine !",
    ),
    "es": (
        "Buenos días a todos.", "¿Empezamos con las cifras de la semana pasada?",
        "{who} se encarga de la propuesta para {org}.", "El presupuesto ronda los 40.000 €.",
        "Hay que decidirlo antes del viernes.", "Te mando las notas esta tarde.",
        "¿Alguna pregunta?", "¡Gracias, hasta la próxima semana!",
    ),
}
TITLES = ("Weekly sync — decisions and next steps", "Pilot review with {org}",
          "Budget check-in", "Customer call: {org}", "Planning session with {who}")
BULLETS = ("The team agreed to ship the onboarding changes this week.",
           "{org} wants a demo before signing.", "Budget for Q3 stays at about €40,000.",
           "Support tickets dropped by 12% after the fix.",
           "The review moves to Thursday.", "Risks are mostly on our side; {who} will track them.")
ACTIONS = ("{who}: send the revised quote to {org}", "{who}: share the meeting notes",
           "{who}: book the demo before Friday", "{who}: follow up on the contract")


def derived_id(prefix: str, key: str, length: int = 14) -> str:
    """An id such as `txn_4fQz...` that is a pure function of `key`."""
    digest = hashlib.blake2b(key.encode(), digest_size=length, person=b"botasync-talk").digest()
    return prefix + digest.translate(_TO_ALNUM).decode("ascii")


def fraction(key: str) -> float:
    """A number in [0, 1) that is a pure function of `key` (a seeded coin)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=b"botasync-coin").digest()
    return int.from_bytes(digest, "big") / 2**64


# -- transcript content ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    """One stretch of speech: seconds from the start of the recording."""

    start: float
    end: float
    text: str
    speaker: str | None
    confidence: float


@dataclass(frozen=True, slots=True)
class Content:
    """A transcript's words and who said them when, and who made it."""

    language: str
    provider: str
    segments: tuple[Segment, ...]
    text: str

    @property
    def word_count(self) -> int:
        """The number of words of the text (whitespace-separated)."""
        return len(self.text.split())


def _sentence(rng: random.Random, language: str) -> str:
    return rng.choice(SENTENCES[language]).format(who=rng.choice(WHO), org=rng.choice(ORG))


@functools.lru_cache(maxsize=512)
def content(key: str, duration_s: float | None) -> Content:
    """The transcript for `key`: 2-3 speakers taking turns, a sentence or three each.

    Segments follow each other (start strictly increasing, end after start) and fit in
    `duration_s` when it is known. Cached: a client polls the same few transcriptions.
    """
    rng = random.Random(key)
    language = rng.choices(list(LANGUAGE_WEIGHTS), list(LANGUAGE_WEIGHTS.values()))[0]
    provider = rng.choice(PROVIDERS)
    speakers = [f"SPEAKER_{n}" for n in range(rng.choice((2, 2, 3)))]
    diarized = rng.random() > 0.05  # a few transcripts have no speaker labels at all
    wanted = 12 if duration_s is None else duration_s / 10
    count = max(2, min(60, round(wanted * rng.uniform(0.6, 1.0))))
    texts = [" ".join(_sentence(rng, language) for _ in range(rng.choice((1, 1, 2, 3))))
             for _ in range(count)]
    lengths = [0.35 * len(t.split()) + rng.uniform(0.3, 1.5) for t in texts]
    gaps = [rng.uniform(0.1, 2.0) for _ in texts]
    total = sum(lengths) + sum(gaps)
    scale = min(1.0, duration_s / total) if duration_s else 1.0
    segments, at, speaker = [], round(rng.uniform(0.0, 1.5) * scale, 2), 0
    for text, length, gap in zip(texts, lengths, gaps, strict=True):
        end = round(at + max(0.05, length * scale), 2)
        if rng.random() < 0.7:
            speaker = (speaker + 1) % len(speakers)
        segments.append(Segment(at, end, text, speakers[speaker] if diarized else None,
                                round(rng.uniform(0.78, 0.99), 3)))
        at = round(end + gap * scale, 2)
        at = at if at > end else round(end + 0.01, 2)
    return Content(language, provider, tuple(segments), " ".join(texts))


def segment_objects(segments: tuple[Segment, ...], *, confidence: bool) -> list[dict[str, Any]]:
    """Segments as the API sends them; `speaker` only when known, `confidence` if asked."""
    out = []
    for s in segments:
        item: dict[str, Any] = {"start": s.start, "end": s.end, "text": s.text}
        if s.speaker is not None:
            item["speaker"] = s.speaker
        if confidence:
            item["confidence"] = s.confidence
        out.append(item)
    return out


# -- summaries -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SummarySpec:
    """A summary of a completed transcription, with the times of its own lifecycle."""

    id: str
    transcription_id: str
    template_id: str | None
    custom_prompt: str | None
    provider: str
    fails: bool
    created_ms: int
    started_ms: int
    done_ms: int
    key: str  # seeds its output

    def status(self, now_ms: int) -> str:
        """pending, then processing, then completed or failed, by the clock."""
        if now_ms < self.started_ms:
            return "pending"
        if now_ms < self.done_ms:
            return "processing"
        return "failed" if self.fails else "completed"


def summary_specs(key: str, txn_id: str, completed_ms: int, *, most: int) -> list[SummarySpec]:
    """The summaries of a transcription completed at `completed_ms` (at most `most`)."""
    rng = random.Random(f"{key}:summaries")
    count = min(most, rng.choices((0, 1, 2), (25, 55, 20))[0])
    specs = []
    for n in range(count):
        custom = rng.random() < 0.2
        created = completed_ms + (2 + 3 * n) * 1000
        started = created + rng.randint(1, 3) * 1000
        specs.append(SummarySpec(
            id=derived_id("sum_", f"{key}:summary:{n}"), transcription_id=txn_id,
            template_id=None if custom else rng.choice(TEMPLATES),
            custom_prompt=rng.choice(CUSTOM_PROMPTS) if custom else None,
            provider=rng.choice(SUMMARY_PROVIDERS), fails=rng.random() < 0.1,
            created_ms=created, started_ms=started, done_ms=started + rng.randint(5, 25) * 1000,
            key=f"{key}:summary:{n}"))
    return specs


def summary_output(key: str, speakers: list[str]) -> dict[str, Any]:
    """A summary's structured output: a title, bullets and action items."""
    rng = random.Random(f"{key}:output")

    def fill(text: str) -> str:
        who = rng.choice(speakers) if speakers and rng.random() < 0.5 else rng.choice(WHO)
        return text.format(who=who, org=rng.choice(ORG))

    return {
        "title": fill(rng.choice(TITLES)),
        "bullets": [fill(b) for b in rng.sample(BULLETS, rng.randint(2, 4))],
        "action_items": [fill(a) for a in rng.sample(ACTIONS, rng.randint(0, 3))],
    }


def summary_object(
    spec: SummarySpec, now_ms: int, project_id: str, speakers: list[str], *, plain_errors: bool,
) -> dict[str, Any]:
    """A summary as served at `now_ms` (the error a string when `plain_errors`)."""
    status = spec.status(now_ms)
    error: Any = None
    if status == "failed":
        message = SUMMARY_ERRORS[int(fraction(spec.key) * len(SUMMARY_ERRORS))]
        error = message if plain_errors else {"code": "summary_failed", "message": message}
    started = spec.started_ms if status != "pending" else None
    done = spec.done_ms if status in TERMINAL else None
    return {
        "id": spec.id, "project_id": project_id, "transcription_id": spec.transcription_id,
        "template_id": spec.template_id, "custom_prompt": spec.custom_prompt,
        "provider": spec.provider,
        "output": summary_output(spec.key, speakers) if status == "completed" else None,
        "status": status, "error": error, "created_at": iso_ms(spec.created_ms),
        "updated_at": iso_ms(done or started or spec.created_ms),
        "started_at": None if started is None else iso_ms(started),
        "completed_at": None if done is None else iso_ms(done),
    }


# -- list cursors ------------------------------------------------------------------------------


class InvalidKeyset(ValueError):
    """A transcription or summary list `cursor` this server did not make."""


def encode_keyset(created_ms: int, item_id: str) -> str:
    """An opaque cursor naming the list position just after (created_ms, id)."""
    raw = f"k1.{created_ms}.{item_id}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_keyset(cursor: str) -> tuple[int, str]:
    """(created_ms, id) of a cursor made by `encode_keyset`, or InvalidKeyset."""
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        match = KEYSET_RE.fullmatch(raw.decode("ascii"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidKeyset(cursor) from None
    if match is None:
        raise InvalidKeyset(cursor)
    return int(match[1]), match[2]
