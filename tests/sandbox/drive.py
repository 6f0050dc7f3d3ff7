"""Drive an already running CDS Hooks Sandbox with headless Chromium: Patient View, Rx View and Rx Sign.

This does not build or start the Sandbox (it is not ours: build and serve it yourself as its own README says, see
docs/sandbox.md). It needs three things already listening on loopback: the Sandbox, a FHIR server with our fixture
patients (`python -m fixtures.fhir_server`) and the service (`msk-cds serve` with the Sandbox's key trusted). For
each run it opens the Sandbox pre-configured by URL parameters (FHIR server, patient, discovery URL, screen, drug),
presses "Sign Order" on Rx Sign, waits for the service's answer and writes into --out:

    <run>.png                 the whole screen (EHR view and the developer panel)
    <run>-card-<n>.png        each card as the Sandbox renders it
    <run>.exchange.json       every hook request body the Sandbox sent to the service, with the status and answer

The JWT the Sandbox sends is not written anywhere. Every request to a host other than loopback is blocked (the
Sandbox's public defaults are not reachable here and must not be called). Not run by CI (CI has no Sandbox).

    pip install -e '.[sandbox]'   # the Python playwright package only: it drives Debian's chromium, no browser download
    python tests/sandbox/drive.py --sandbox http://127.0.0.1:8480 --fhir http://127.0.0.1:8481/fhir \\
        --services http://127.0.0.1:8482/cds-services --out /tmp/sandbox-run
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlparse

LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}
SETTLE_SECONDS = 2.5
TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class Run:
    name: str
    screen: str            # patient-view | rx-view | rx-sign
    hook: str
    patient: str
    medication: str = ""   # typed into the Medication field and picked from the list, as a clinician does
    frequency: str = ""    # the Frequency menu: daily, twice daily, ...
    supply: str = ""       # Rx Sign's Supply Duration menu: 7 days ... 90 days
    start_end: tuple[str, str] | None = None     # Start Date / End Date (MM/DD/YYYY, typed)
    sign: bool = False     # press "Sign Order" (Rx Sign fires order-sign only then)
    feedback: str = ""     # "accept": take the first card's first suggestion; "override": dismiss it with a reason


def _day(offset: int) -> str:
    return (dt.date.today() + dt.timedelta(days=offset)).strftime("%m/%d/%Y")


def default_runs() -> list[Run]:
    """The tabs and patients of docs/sandbox.md and the before/after cards of docs/cards/."""
    return [
        # Patient View: refractory sacroiliitis (failed naproxen, no TB/HBV screening) and a diabetic Charcot foot
        Run("patient-view-refractory-sacroiliitis", "patient-view", "patient-view", "pat-22"),
        Run("patient-view-charcot-foot", "patient-view", "patient-view", "pat-15"),
        # Rx View (order-select): methotrexate for purely axial refractory sacroiliitis after a failed NSAID
        Run("rx-view-methotrexate-axial", "rx-view", "order-select", "pat-40",
            medication="Methotrexate 2.5 MG Oral Tablet"),
        # Rx View (order-select): naproxen 500 mg twice daily, history of a bleeding duodenal ulcer
        Run("rx-view-naproxen-gi-bleed", "rx-view", "order-select", "pat-46",
            medication="Naproxen 500 MG Oral Tablet", frequency="twice daily"),
        # Rx Sign (order-sign): prednisone 10 mg daily for six months (long-term glucocorticoid)
        Run("rx-sign-prednisone-long-term", "rx-sign", "order-sign", "pat-41",
            medication="Prednisone 10 MG Oral Tablet", supply="90 days", start_end=(_day(0), _day(180)),
            sign=True),
    ]


def feedback_runs() -> list[Run]:
    """Feedback as the Sandbox sends it: a suggestion taken, a card dismissed with an override reason."""
    return [
        Run("feedback-accepted-suggestion", "patient-view", "patient-view", "pat-22", feedback="accept"),
        Run("feedback-overridden-with-reason", "patient-view", "patient-view", "pat-15", feedback="override"),
    ]


def sandbox_url(base: str, fhir: str, services: str, run: Run) -> str:
    query = {"fhirServiceUrl": fhir, "patientId": run.patient, "serviceDiscoveryURL": services,
             "screen": run.screen, "hook": run.hook}
    return f"{base.rstrip('/')}/?{urlencode(query)}"


def drive(args: argparse.Namespace) -> int:
    from playwright.sync_api import sync_playwright    # only this script needs it

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [r for r in default_runs() + feedback_runs()
            if (r.name in args.only if args.only else not r.feedback)]
    service_path = urlparse(args.services).path.rstrip("/") + "/"
    failures = 0
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        for run in runs:
            context = browser.new_context(viewport={"width": args.width, "height": args.height})
            context.route("**/*", lambda route: route.continue_() if urlparse(route.request.url).hostname in LOOPBACK
                          else route.abort())
            page = context.new_page()
            exchanges: list[dict] = []

            def on_response(response, exchanges=exchanges) -> None:
                req = response.request
                if req.method == "POST" and urlparse(req.url).path.startswith(service_path):
                    try:
                        answer = response.json()
                    except Exception:                       # noqa: BLE001 - keep the raw text of a non-JSON answer
                        answer = response.text()
                    exchanges.append({"url": req.url, "request": json.loads(req.post_data or "null"),
                                      "status": response.status, "response": answer})

            page.on("response", on_response)
            page.goto(sandbox_url(args.sandbox, args.fhir, args.services, run), timeout=TIMEOUT_MS)
            hook_url = f"{args.services.rstrip('/')}/"
            page.wait_for_function("() => !document.querySelector('.MuiBackdrop-root:not([style*=\"opacity: 0\"])')",
                                   timeout=TIMEOUT_MS)
            if run.screen == "patient-view":
                _wait_for_hook(page, exchanges, run.hook, hook_url)
            else:
                _fill_order(page, run)
                before = len(exchanges)
                if run.sign:
                    page.get_by_role("button", name="Sign Order").click()
                _wait_for_hook(page, exchanges, run.hook, hook_url, after=before if run.sign else 0,
                               drug=run.medication)
            if run.feedback:
                _give_feedback(page, run, exchanges)
            time.sleep(SETTLE_SECONDS)
            page.screenshot(path=str(out / f"{run.name}.png"), full_page=True)
            cards = page.locator("[class*='decision-card']")
            _tall(page, args)
            for n in range(cards.count()):
                cards.nth(n).screenshot(path=str(out / f"{run.name}-card-{n + 1}.png"))
            feedback = [e for e in exchanges if e["url"].endswith("/feedback")]
            if run.feedback:
                (out / f"{run.name}.feedback.json").write_text(json.dumps(feedback, indent=2) + "\n")
                print(f"{run.name}: {len(feedback)} feedback call(s): {[e['status'] for e in feedback]}")
                failures += 0 if feedback else 1
            hook_exchanges = [e for e in exchanges if (e["request"] or {}).get("hook") == run.hook]
            (out / f"{run.name}.exchange.json").write_text(json.dumps(hook_exchanges, indent=2) + "\n")
            last = hook_exchanges[-1] if hook_exchanges else None
            summaries = [c.get("summary") for c in (last or {}).get("response", {}).get("cards", [])] \
                if last and isinstance(last.get("response"), dict) else []
            print(f"{run.name}: {len(hook_exchanges)} {run.hook} call(s), last status "
                  f"{last and last['status']}, {cards.count()} card(s) shown: {summaries}")
            if not last:
                failures += 1
            context.close()
        browser.close()
    return 1 if failures else 0


def _give_feedback(page, run: Run, exchanges: list[dict]) -> None:
    """Take the first suggestion, or dismiss the first card with its first override reason (else plain Dismiss)."""
    before = len(exchanges)
    card = page.locator("[class*='decision-card']").first
    if run.feedback == "accept":
        answer = next(e["response"] for e in reversed(exchanges) if (e["request"] or {}).get("hook") == run.hook)
        label = answer["cards"][0]["suggestions"][0]["label"]
        card.get_by_role("button", name=label, exact=True).first.click()
    elif card.get_by_label("select dismiss reason").count():
        card.get_by_label("select dismiss reason").click()
        page.get_by_role("menuitem").first.click()
    else:
        card.get_by_role("button", name="Dismiss").click()
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while time.monotonic() < deadline and not any(e["url"].endswith("/feedback") for e in exchanges[before:]):
        page.wait_for_timeout(250)


def _tall(page, args: argparse.Namespace) -> None:
    """A viewport as tall as the page, so the Sandbox's fixed header does not cover the top of a long card."""
    height = page.evaluate("() => document.documentElement.scrollHeight")
    page.set_viewport_size({"width": args.width, "height": max(args.height, min(int(height) + 50, 16000))})
    page.wait_for_timeout(300)


def _fill_order(page, run: Run) -> None:
    """Author the draft in the form like a clinician (URL parameters for the drug are reset when the patient loads)."""
    # one input event: typed key by key, the Sandbox's debounced search races its own controlled field
    page.locator("input[name='medication-input']").fill(run.medication)
    page.get_by_role("button", name=run.medication, exact=True).click()
    page.wait_for_timeout(500)
    if run.frequency:
        page.locator("#dosage-frequency, [aria-labelledby~='dosage-frequency-label']").first.click()
        page.get_by_role("option", name=run.frequency, exact=True).click()
        page.wait_for_timeout(300)
    if run.supply:
        page.locator("#supply-duration").click()
        page.get_by_role("option", name=run.supply, exact=True).click()
        page.wait_for_timeout(300)
    if run.start_end:
        for label, value in zip(("Start Date", "End Date"), run.start_end):
            box = page.get_by_label(label, exact=True).first
            box.click()
            box.press_sequentially(value.replace("/", ""), delay=30)
            page.wait_for_timeout(300)
    page.wait_for_timeout(1000)


def _wait_for_hook(page, exchanges: list[dict], hook: str, hook_url: str, after: int = 0, drug: str = "") -> None:
    """Until the service answered a `hook` call (whose draft names `drug`, when given)."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        if any((e["request"] or {}).get("hook") == hook and drug in json.dumps(e["request"])
               for e in exchanges[after:]):
            return
        page.wait_for_timeout(250)


def card_demo(args: argparse.Namespace) -> int:
    """Render a saved service answer in the Sandbox's own Card Demo (pencil icon) and screenshot each card.

    For cards the Sandbox cannot reach through its tabs (e.g. an order card while the draft is dropped): the answer
    is the service's response to a recorded request, pasted into the Card Demo editor, rendered by the same card
    list component as the tabs."""
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    answer = Path(args.card_demo).read_text(encoding="utf-8")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        context = browser.new_context(viewport={"width": args.width, "height": args.height})
        context.route("**/*", lambda route: route.continue_() if urlparse(route.request.url).hostname in LOOPBACK
                      else route.abort())
        page = context.new_page()
        run = Run("card-demo", "patient-view", "patient-view", args.patient)
        page.goto(sandbox_url(args.sandbox, args.fhir, args.services, run), timeout=TIMEOUT_MS)
        page.wait_for_timeout(4000)
        page.locator("header button").filter(has=page.locator("svg")).nth(0).click()
        name = args.name or Path(args.card_demo).stem
        cards = json.loads(answer).get("cards") or []
        for n, card in enumerate(cards, start=1):        # the Card Demo takes one card at a time
            editor = page.locator(".cm-content").first
            editor.click()
            page.keyboard.press("Control+A")
            page.keyboard.press("Delete")
            page.keyboard.insert_text(json.dumps(card, indent=2))
            page.wait_for_timeout(1500)
            _tall(page, args)
            page.locator("[class*='decision-card']").first.screenshot(path=str(out / f"{name}-card-{n}.png"))
        print(f"{name}: {len(cards)} card(s) rendered in the Card Demo")
        browser.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sandbox", default="http://127.0.0.1:8480", help="the running Sandbox")
    parser.add_argument("--fhir", default="http://127.0.0.1:8481/fhir", help="FHIR server the Sandbox reads")
    parser.add_argument("--services", default="http://127.0.0.1:8482/cds-services", help="our discovery URL")
    parser.add_argument("--out", required=True, help="directory for screenshots and recorded requests")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="browser executable (Debian's chromium)")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--only", nargs="*", help="run names to drive (default: all but the feedback runs)")
    parser.add_argument("--card-demo", help="a saved service answer (JSON) to render in the Sandbox's Card Demo")
    parser.add_argument("--name", help="--card-demo: file name stem of the screenshots")
    parser.add_argument("--patient", default="pat-40", help="--card-demo: patient the Sandbox opens with")
    args = parser.parse_args(argv)
    return card_demo(args) if args.card_demo else drive(args)


if __name__ == "__main__":
    sys.exit(main())
