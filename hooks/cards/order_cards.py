"""Cards for draft orders (order-select, order-sign): warnings with overrideReasons and a fix (delete the draft,
create the pathway's alternative), and ordering guidance (dose, duration, reassessment date) for a fitting drug."""
from __future__ import annotations

import datetime as dt
from typing import Any

from hooks.cards import markdown as md
from hooks.cards.render import (CardContext, card_uuid, evidence_section, extension, links, medication_suggestion,
                                override_reasons, service_suggestion)
from hooks.cards.suggestions import OrderContext, create, delete, medication_request, service_request
from hooks.knowledge.clinical import ClinicalKnowledge
from hooks.pathways.orders import OrderIssue


def _drug_name(issue: OrderIssue, k: ClinicalKnowledge) -> str:
    if issue.draft.display:
        return issue.draft.display
    if issue.draft.drug:
        return k.drugs[issue.draft.drug].name
    return issue.draft.resource_type


def _source(issue: OrderIssue, citations: list[str], k: ClinicalKnowledge) -> dict[str, Any]:
    pathway = k.pathways[issue.pathway]
    primary = next((k.evidence[c] for c in citations if k.evidence[c].url), k.evidence[citations[0]])
    out: dict[str, Any] = {"label": k.pathway_file.card_text.source_label.format(label=primary.label),
                           "topic": pathway.topic.fhir()}
    if primary.url:
        out["url"] = primary.url
    return out


def _fix_suggestions(issue: OrderIssue, ctx: OrderContext, cctx: CardContext, k: ClinicalKnowledge) -> list[dict]:
    text = k.pathway_file.card_text
    ref = issue.draft.reference
    removal = delete(ref, text.delete_draft.format(reference=ref))
    out: list[dict[str, Any]] = []
    index = 0
    if issue.add_services or issue.add_drugs:
        actions = []
        names = []
        for drug_id, dosing in issue.add_drugs:
            actions.append(create(medication_request(drug_id, dosing, ctx, k, text.reassess_note),
                                  k.drugs[drug_id].dosing[dosing].text))
            names.append(k.drugs[drug_id].name)
        for service_id in issue.add_services:
            actions.append(create(service_request(service_id, ctx, k), k.services.services[service_id].text))
            names.append(k.services.services[service_id].text)
        if issue.hold:
            # screening first: the tests now, the drafted drug is removed and ordered once the results are known
            actions.insert(0, removal)
            label = text.held.format(items="; ".join(names), drug=k.drugs[issue.draft.drug].name if issue.draft.drug else _drug_name(issue, k))
        else:
            label = text.keep_draft_add.format(items="; ".join(names))
        out.append({"label": label[:300],
                    "uuid": card_uuid(cctx.hook_instance, f"{issue.rule}|{ref}", f"s{index}"),
                    "isRecommended": True, "actions": actions})
        index += 1
    for option in issue.replacements:
        suggestion = medication_suggestion(
            option, ctx, k, cctx.hook_instance, f"{issue.rule}|{ref}", index, issue.replacement_companions,
            pre_actions=[removal])
        suggestion["label"] = text.replace_draft.format(items=suggestion["label"])[:300]
        if out:
            suggestion.pop("isRecommended", None)
        out.append(suggestion)
        index += 1
    if issue.replacement_service:
        suggestion = service_suggestion(issue.replacement_service, ctx, k, cctx.hook_instance,
                                        f"{issue.rule}|{ref}", index)
        suggestion["actions"].insert(0, removal)
        suggestion["label"] = text.replace_draft.format(items=suggestion["label"])[:300]
        out.append(suggestion)
        index += 1
    if issue.delete or not out:
        out.append({"label": text.delete_draft.format(reference=ref)[:300],
                    "uuid": card_uuid(cctx.hook_instance, f"{issue.rule}|{ref}", f"s{index}"),
                    "actions": [removal]})
    if not any(s.get("isRecommended") for s in out):
        out[0]["isRecommended"] = True
    return out


def order_card(issue: OrderIssue, reason: str | None, cctx: CardContext, k: ClinicalKnowledge) -> dict[str, Any]:
    """The card for one issue about one draft order."""
    text = k.pathway_file.card_text
    ctx = OrderContext(cctx.orders.patient_id, cctx.orders.user, cctx.orders.now, cctx.orders.intent, reason)
    ref = issue.draft.reference
    drug_name = _drug_name(issue, k)
    where = text.order_check_where.format(reference=md.escape(ref), drug=md.escape(drug_name))
    if issue.draft.duration_days is not None:
        where += " " + text.draft_duration.format(days=f"{issue.draft.duration_days:g}")
    lines: list[str] = []
    citations: list[str] = []
    suggestions: list[dict[str, Any]] = []
    if issue.kind == "guidance":
        drug_id, dosing_key = issue.guidance
        dosing = k.drugs[drug_id].dosing[dosing_key]
        days = dosing.reassess_days or dosing.duration_days
        summary = k.pathway_file.order_guidance.summary.format(drug=k.drugs[drug_id].name.capitalize(),
                                                              dose_text=dosing.text)
        lines = [text.guidance_where.format(drug=k.drugs[drug_id].name, step=issue.step_title),
                 text.guidance_dose.format(text=dosing.text)]
        if days:
            when = (cctx.orders.now + dt.timedelta(days=days)).date().isoformat()
            lines.append(text.guidance_reassess.format(date=when))
        lines += [f.text for f in issue.flags]
        citations = list(dict.fromkeys([*dosing.citations, *k.pathways[issue.pathway].evidence]))
        indicator = "info"
    elif issue.kind == "order_check":
        check = issue.check
        summary = check.summary
        lines = [check.detail]
        if issue.step_title:
            lines.append(text.current_step.format(step=issue.step_title))
        citations = list(check.citations)
        indicator = "warning"
        suggestions = _fix_suggestions(issue, ctx, cctx, k)
    else:
        summary = issue.flags[0].text
        lines = [f.text + (f" ({md.escape(', '.join(f.sources))})" if f.sources else "") for f in issue.flags]
        citations = list(dict.fromkeys(c for f in issue.flags for c in f.citations))
        indicator = "warning"
        suggestions = _fix_suggestions(issue, ctx, cctx, k)
    if len(summary) >= 140:
        summary = summary[:136].rstrip() + "..."
    detail = "\n".join(part for part in (
        f"{where}\n",
        md.section(text.safety if issue.kind == "safety" else text.next, lines),
        md.section(text.orders, [md.escape(s["label"]) for s in suggestions]),
        md.section(text.evidence, evidence_section(citations, k)),
        f"_{k.pathway_file.advice_footer}_",
    ) if part)
    card: dict[str, Any] = {
        "uuid": card_uuid(cctx.hook_instance, f"{issue.rule}|{ref}", "card"),
        "summary": summary,
        "indicator": indicator,
        "detail": detail,
        "source": _source(issue, citations, k),
        "extension": extension(issue.rule, issue.pathway, [{"reference": ref, "draft": issue.draft.resource_type}],
                               f"{issue.rule}|{ref}"),
    }
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = "at-most-one"
    if indicator != "info":
        card["overrideReasons"] = override_reasons(k)
    card_links = links(citations, k)
    if card_links:
        card["links"] = card_links
    return card

