"""The card for a draft order the intake could not read: never silent. The order hooks name the draft by its own
text and say it could not be checked, so the clinician knows no pathway or safety check ran on it."""
from __future__ import annotations

from typing import Any, Iterable

import re
from hooks.cards.render import card_uuid
from hooks.knowledge import knowledge_version
from hooks.record import UnreadableDraft

RULE = "intake.unreadable_draft"
SUMMARY = "Not checked: {label}. Its order data could not be read."
DETAIL = ("The service could not read what this draft orders, so it was not checked against the imaging "
          "findings pathway or the safety checks (allergy, kidney function, pregnancy, anticoagulants). "
          "Review it as you would without decision support.")
SOURCE_LABEL = "MSK imaging CDS: order data check"
FALLBACK_LABEL = {"MedicationRequest": "a draft medication order", "ServiceRequest": "a draft service order"}
MAX_LABEL = 80
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


def _label(draft: UnreadableDraft) -> str:
    """The draft's own text for the summary (plain text: control characters and line breaks removed, bounded)."""
    text = " ".join(_CONTROL.sub(" ", draft.label or "").split())
    if not text:
        return FALLBACK_LABEL.get(draft.resource_type, "a draft order")
    return text if len(text) <= MAX_LABEL else text[:MAX_LABEL - 1].rstrip() + "…"


def unreadable_draft_card(draft: UnreadableDraft, hook_instance: str, index: int) -> dict[str, Any]:
    key = draft.reference or f"unreadable-draft-{index}"
    return {
        "uuid": card_uuid(hook_instance, RULE, key),
        "summary": SUMMARY.format(label=_label(draft))[:139],
        "detail": DETAIL,
        "indicator": "info",
        "source": {"label": SOURCE_LABEL},
        "extension": {
            "org.msk-cds.rule": RULE,
            "org.msk-cds.knowledge-version": knowledge_version(),
            "org.msk-cds.dedupe-key": f"{RULE}|{key}",
        },
    }


def unreadable_draft_cards(drafts: Iterable[UnreadableDraft], hook_instance: str,
                           selections: Any = None) -> list[dict[str, Any]]:
    """One info card per unreadable draft; at order-select (`selections` given) only the selected ones, and the
    ones whose id could not be read (they may be the selected one)."""
    wanted = None
    if selections is not None:
        wanted = {"/".join(s.rstrip("/").split("/")[-2:]) for s in selections if isinstance(s, str) and "/" in s} \
            if isinstance(selections, list) else set()
    return [unreadable_draft_card(d, hook_instance, i) for i, d in enumerate(drafts)
            if wanted is None or d.reference is None or d.reference in wanted]
