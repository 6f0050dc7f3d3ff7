"""Card ledger: which card (rule, pathway step, dedupe key) was shown to which pseudonymous clinician and patient.

Feedback refers to cards only by uuid; the ledger is what lets analytics count shown / accepted / overridden per rule,
what keeps order-sign from repeating a card already shown at order-select, and what lets SUPPRESS_OVERRIDDEN_CARDS
hold back a card the same clinician overrode for the same patient. Patients and users are stored only as keyed
hashes (HMAC-SHA-256 of fhirServer + id), never as raw ids.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping, Sequence

from flask import Flask, current_app, has_app_context
from sqlalchemy import Column, DateTime, Index, Integer, String, Table, Text, and_, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from service import metrics, storage

log = logging.getLogger(__name__)

EXTENSION_KEY = "msk_cds.ledger"
RULE_EXTENSION = "org.msk-cds.rule"
PATHWAY_EXTENSION = "org.msk-cds.pathway"
DEDUPE_EXTENSION = "org.msk-cds.dedupe-key"
MAX_SUGGESTIONS_KEPT = 20

card_ledger = Table(
    "card_ledger",
    storage.metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("card_uuid", String(64), nullable=False),
    Column("service_id", String(100), nullable=False),
    Column("hook", String(40), nullable=False),
    Column("hook_instance", String(100)),
    Column("rule_id", String(200)),
    Column("pathway", String(100)),
    Column("dedupe_key", String(300)),
    Column("indicator", String(16)),
    Column("patient_key", String(64)),
    Column("user_key", String(64)),
    # [[suggestion uuid, label], ...]: lets analytics name the accepted suggestion; labels are knowledge wording
    Column("suggestions", Text),
    Column("shown_at", DateTime(timezone=True), nullable=False),
    Index("ix_card_ledger_card_uuid", "card_uuid"),
    Index("ix_card_ledger_patient_dedupe", "patient_key", "dedupe_key", "shown_at"),
    Index("ix_card_ledger_user_patient", "user_key", "patient_key"),
)

# The pseudonym key, generated once per database so every instance derives the same patient and user keys.
ledger_secret = Table(
    "ledger_secret",
    storage.metadata,
    Column("name", String(40), primary_key=True),
    Column("value", String(128), nullable=False),
)


def _as_utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


@dataclass(frozen=True)
class LedgerEntry:
    """What the ledger keeps of one returned card."""

    card_uuid: str
    rule_id: str | None
    pathway: str | None
    dedupe_key: str | None
    indicator: str | None
    suggestions: tuple[tuple[str, str], ...]

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> "LedgerEntry | None":
        card_uuid = card.get("uuid")
        if not isinstance(card_uuid, str) or not card_uuid or len(card_uuid) > 64:
            return None         # no uuid, no feedback: nothing to join later
        extension = card.get("extension") if isinstance(card.get("extension"), Mapping) else {}
        suggestions = []
        for suggestion in (card.get("suggestions") or [])[:MAX_SUGGESTIONS_KEPT]:
            if isinstance(suggestion, Mapping) and isinstance(suggestion.get("uuid"), str):
                suggestions.append((suggestion["uuid"][:64], str(suggestion.get("label", ""))[:200]))
        return cls(
            card_uuid=card_uuid,
            rule_id=_text(extension.get(RULE_EXTENSION), 200),
            pathway=_text(extension.get(PATHWAY_EXTENSION), 100),
            dedupe_key=_text(extension.get(DEDUPE_EXTENSION), 300),
            indicator=_text(card.get("indicator"), 16),
            suggestions=tuple(suggestions),
        )


def _text(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


@dataclass(frozen=True)
class ShownContext:
    """The call that showed the cards, reduced to what the ledger keeps."""

    service_id: str
    hook: str
    hook_instance: str | None
    patient_key: str | None
    user_key: str | None
    now: dt.datetime


class CardLedger:
    def __init__(
        self,
        engine: Engine,
        *,
        salt: str | None = None,
        no_repeat_window: dt.timedelta = dt.timedelta(hours=24),
        suppress_overridden: bool = False,
        override_window: dt.timedelta = dt.timedelta(days=30),
    ):
        self.engine = engine
        self.no_repeat_window = no_repeat_window
        self.suppress_overridden = suppress_overridden
        self.override_window = override_window
        self._salt = salt.encode() if salt else None

    # --- pseudonyms -------------------------------------------------------------------------------------------

    def _key(self) -> bytes:
        if self._salt is None:
            self._salt = self._database_salt().encode()
        return self._salt

    def _database_salt(self) -> str:
        """Read the per-database key, creating it on first use; concurrent first uses settle on one row."""
        query = select(ledger_secret.c.value).where(ledger_secret.c.name == "pseudonym_key")
        with self.engine.connect() as conn:
            value = conn.execute(query).scalar()
        if value:
            return value
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(ledger_secret).values(name="pseudonym_key", value=secrets.token_hex(32)))
        except IntegrityError:
            pass                # another instance won the race; its key is the one to use
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()

    def pseudonym(self, fhir_server: str | None, local_id: str | None) -> str | None:
        if not local_id:
            return None
        message = f"{(fhir_server or '').rstrip('/')}|{local_id}".encode()
        return hmac.new(self._key(), message, hashlib.sha256).hexdigest()

    # --- the two behaviours and the record -------------------------------------------------------------------

    def shown_at_order_select(self, patient_key: str, dedupe_keys: Iterable[str], now: dt.datetime) -> set[str]:
        keys = sorted(set(dedupe_keys))
        if not keys:
            return set()
        query = select(card_ledger.c.dedupe_key).where(
            card_ledger.c.patient_key == patient_key,
            card_ledger.c.hook == "order-select",
            card_ledger.c.dedupe_key.in_(keys),
            card_ledger.c.shown_at >= _as_utc(now) - self.no_repeat_window,
        )
        with self.engine.connect() as conn:
            return {row[0] for row in conn.execute(query)}

    def overridden_by_user(self, user_key: str, patient_key: str, now: dt.datetime) -> set[tuple[str | None, str | None]]:
        """(rule, dedupe key) pairs this clinician overrode for this patient within the window."""
        feedback = storage.feedback_table
        query = (
            select(card_ledger.c.rule_id, card_ledger.c.dedupe_key)
            .join(feedback, feedback.c.card_uuid == card_ledger.c.card_uuid)
            .where(
                card_ledger.c.user_key == user_key,
                card_ledger.c.patient_key == patient_key,
                feedback.c.outcome == "overridden",
                card_ledger.c.shown_at >= _as_utc(now) - self.override_window,
            )
            .distinct()
        )
        with self.engine.connect() as conn:
            return {(row[0], row[1]) for row in conn.execute(query)}

    def record(self, shown: ShownContext, entries: Sequence[LedgerEntry]) -> None:
        if not entries:
            return
        rows = [
            {
                "card_uuid": e.card_uuid,
                "service_id": shown.service_id,
                "hook": shown.hook,
                "hook_instance": (shown.hook_instance or "")[:100] or None,
                "rule_id": e.rule_id,
                "pathway": e.pathway,
                "dedupe_key": e.dedupe_key,
                "indicator": e.indicator,
                "patient_key": shown.patient_key,
                "user_key": shown.user_key,
                "suggestions": json.dumps(e.suggestions) if e.suggestions else None,
                "shown_at": _as_utc(shown.now),
            }
            for e in entries
        ]
        with self.engine.begin() as conn:
            conn.execute(insert(card_ledger), rows)

    def filter_and_record(
        self,
        *,
        service_id: str,
        hook: str,
        hook_instance: str | None,
        fhir_server: str | None,
        patient_id: str | None,
        user_id: str | None,
        now: dt.datetime,
        cards: Sequence[Mapping[str, Any]],
    ) -> tuple[list[Mapping[str, Any]], dict[str, int]]:
        """The cards to show (after the no-repeat and override rules) and how many each rule withheld."""
        shown = ShownContext(
            service_id=service_id,
            hook=hook,
            hook_instance=hook_instance,
            patient_key=self.pseudonym(fhir_server, patient_id),
            user_key=self.pseudonym(fhir_server, user_id),
            now=now,
        )
        # dedupe keys name resources ("rule|Patient/123"): keep only their pseudonyms, like the patient's own key
        entries = [replace(e, dedupe_key=self.pseudonym(fhir_server, e.dedupe_key))
                   if e is not None and e.dedupe_key else e
                   for e in map(LedgerEntry.from_card, cards)]
        keep = [True] * len(cards)
        withheld = {"shown_at_order_select": 0, "overridden_by_user": 0}

        if hook == "order-sign" and shown.patient_key:
            repeated = self.shown_at_order_select(
                shown.patient_key, (e.dedupe_key for e in entries if e and e.dedupe_key), now)
            for i, entry in enumerate(entries):
                if entry and entry.dedupe_key in repeated:
                    keep[i] = False
                    withheld["shown_at_order_select"] += 1

        if self.suppress_overridden and shown.patient_key and shown.user_key:
            overridden = self.overridden_by_user(shown.user_key, shown.patient_key, now)
            for i, entry in enumerate(entries):
                if keep[i] and entry and entry.rule_id and (entry.rule_id, entry.dedupe_key) in overridden:
                    keep[i] = False
                    withheld["overridden_by_user"] += 1

        kept_cards = [card for card, k in zip(cards, keep) if k]
        self.record(shown, [e for e, k in zip(entries, keep) if k and e is not None])
        return kept_cards, withheld


def init_app(app: Flask) -> None:
    """Create the ledger tables and attach the ledger to the app's storage."""
    store = app.extensions.get(storage.EXTENSION_KEY)
    engine = getattr(store, "engine", None)
    if engine is None:
        return
    card_ledger.create(engine, checkfirst=True)
    ledger_secret.create(engine, checkfirst=True)
    config = app.config
    app.extensions[EXTENSION_KEY] = CardLedger(
        engine,
        salt=config.get("LEDGER_SALT") or None,
        no_repeat_window=dt.timedelta(hours=float(config.get("NO_REPEAT_WINDOW_HOURS", 24))),
        suppress_overridden=bool(config.get("SUPPRESS_OVERRIDDEN_CARDS", False)),
        override_window=dt.timedelta(days=float(config.get("OVERRIDE_SUPPRESSION_DAYS", 30))),
    )


def after_handler(hook_request: Any, cards: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Called by the invoke path once the handler has answered: withhold repeats, record what is shown, count it.

    A ledger failure never costs the clinician the cards: they are returned unfiltered and the failure is logged
    (without identifiers).
    """
    cards = list(cards)
    service_id = getattr(hook_request, "service_id", None)
    ledger = current_app.extensions.get(EXTENSION_KEY) if has_app_context() else None
    if ledger is not None and cards:
        try:
            cards, withheld = ledger.filter_and_record(
                service_id=service_id,
                hook=hook_request.hook,
                hook_instance=hook_request.hook_instance,
                fhir_server=hook_request.fhir_server,
                patient_id=hook_request.patient_id,
                user_id=hook_request.user_reference,
                now=hook_request.now,
                cards=cards,
            )
            for reason, count in withheld.items():
                metrics.count_suppressed(service_id, reason, count)
        except SQLAlchemyError as exc:
            log.error("card_ledger_unavailable", extra={"reason": type(exc).__name__})
    metrics.count_cards(service_id, cards)
    return cards
