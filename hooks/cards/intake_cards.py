"""The card for a draft order the intake could not read: never silent. The order hooks name the draft by its own
text and say it could not be checked, so the clinician knows no pathway or safety check ran on it. Rendered by the
one renderer (hooks/cards/render.py) from its wording in knowledge/cards.yaml (rule intake.unreadable_draft)."""
from __future__ import annotations

import re
from typing import Any, Iterable

from hooks.cards.render import CardPlan, render
from hooks.knowledge.cards import card_wording
from hooks.knowledge.clinical import clinical_knowledge
from hooks.record import UnreadableDraft

RULE = "intake.unreadable_draft"
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
    k, cards = clinical_knowledge(), card_wording()
    label = _label(draft)
    plan = CardPlan(
        rule=RULE, pathway="intake", step=None, indicator="info", wording=cards.rules[RULE],
        values={"drug": label}, findings=(), reports=(), fallback_finding=None,
        reasons=(cards.layout.not_checked,), suggestions=(), selection_behavior=None, dedupe_key=f"{RULE}|{key}",
        topic=None, draft=label, draft_reference=key,
        provenance={"draft": {"reference": draft.reference, "resourceType": draft.resource_type}})
    return render(plan, k, cards, hook_instance).to_json()


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
