"""Words for the identifiers the dashboard shows: states, rules, loss reasons, deal stages, sources.

People read "Break-up due", not `BREAKUP_DUE`; the identifier stays in each tooltip and in
the lead list's links, since that is what the API, the CLI and the CRM call it. An
identifier nobody named here (a custom deal stage, a portal's own source) is still made
readable: underscores become spaces and the first letter a capital.
"""

from __future__ import annotations

WORDS: dict[str, str] = {
    # lifecycle states (rules/lifecycle.py)
    "ACTIVE": "Active",
    "BREAKUP_DUE": "Break-up due",
    "LOST": "Lost",
    "REENGAGE_DUE": "Check-in due",
    "SUPPRESSED": "Do not contact",
    "WON": "Won",
    # rules
    "repeated_no": "Said no repeatedly",
    "decisive_no": "Decision maker said no",
    "pushed_back": "Meetings pushed back",
    "unresponsive": "Unanswered follow-ups",
    "effort_exceeds_value": "Effort exceeds deal value",
    "proposal_expired": "Proposal expired",
    "call_cadence_exhausted": "Call cadence exhausted",
    "breakup_grace": "No reply after break-up",
    "reengage": "Time to check in",
    "reply_resets": "Lead replied",
    "consent_given": "Consent given again",
    "do_not_contact": "Do not contact",
    "do_not_contact_channels": "Do not contact (channels)",
    "erasure_requested": "Erasure requested",
    "suppression_list": "On the suppression list",
    # loss reasons (the policy's categories and the rules' own)
    "not_interested": "Not interested",
    "no_response": "No response",
    "deprioritized": "Deprioritized",
    "competitor": "Chose a competitor",
    "budget": "Budget",
    "timing": "Timing",
    "no_need": "No need",
    "authority": "No authority",
    "other": "Other",
    # HubSpot's default sales pipeline stages (internal values -> the labels HubSpot shows)
    "appointmentscheduled": "Appointment scheduled",
    "qualifiedtobuy": "Qualified to buy",
    "presentationscheduled": "Presentation scheduled",
    "decisionmakerboughtin": "Decision maker bought-in",
    "contractsent": "Contract sent",
    "closedwon": "Closed won",
    "closedlost": "Closed lost",
    # outcomes
    "open": "Open",
    "won": "Won",
    "lost": "Lost",
    "suppressed": "Do not contact",
}


def label(identifier: str) -> str:
    """Say an identifier in words (placeholders such as "(no deal)" are already words)."""
    if identifier in WORDS:
        return WORDS[identifier]
    if identifier.startswith("("):
        return identifier
    text = identifier.replace("_", " ").strip()
    if text.isupper():
        text = text.lower()
    return text[:1].upper() + text[1:] if text else identifier


def titled(identifier: str) -> str:
    """The label with the identifier after it when they differ, for tooltips: `Break-up due (BREAKUP_DUE)`."""
    words = label(identifier)
    return words if words == identifier else f"{words} ({identifier})"
