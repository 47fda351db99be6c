"""A fake HubSpot portal with realistic histories, for backfill tests: seeded, deterministic, dated from `now_ms`.

Each contact gets a profile (source, industry, priority, email, owner) whose values are
dated by their property history, and a history of calls (mostly unanswered), emails sent,
some replies, meetings booked, held or missed; some opt out, some become customers, some
have a deal (won or still open). Everything happens before `now_ms` minus a day, so that
evaluating at `now_ms` or a little later gives the same states.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from rules.events import format_ms
from tests.fakes.hubspot import FakeHubSpot

DAY_MS = 86_400_000
CONNECTED = "f240bbac-87c9-4f6e-bf70-924b57d47db7"
NO_ANSWER = "73a0d17f-1163-4015-bdd5-ec830791da20"


@dataclass
class Portal:
    """What was seeded: ids per object type, for the assertions."""

    contacts: list[str] = field(default_factory=list)
    deals: list[str] = field(default_factory=list)
    engagements: dict[str, list[str]] = field(default_factory=lambda: {"calls": [], "emails": [], "meetings": []})

    @property
    def engagement_count(self) -> int:
        return sum(len(ids) for ids in self.engagements.values())


def seed_portal(fake: FakeHubSpot, now_ms: int, contacts: int = 300, seed: int = 14, days: int = 120) -> Portal:
    """Fill `fake` with `contacts` contacts and their histories over the `days` before `now_ms`."""
    rng = random.Random(seed)
    portal = Portal()
    start = now_ms - days * DAY_MS
    ids = iter(range(1, 10**9))
    for n in range(contacts):
        cid = str(10_001 + n)
        portal.contacts.append(cid)
        created = start + rng.randrange(0, 20 * DAY_MS)
        fake.add_contact(cid, hubspot_owner_id=str(rng.choice([101, 102, 103])))
        history = {
            "email": [(f"lead{n}@example.com", format_ms(created))],
            "hs_analytics_source": [(rng.choice(["ORGANIC_SEARCH", "PAID_SEARCH", "REFERRALS"]), format_ms(created))],
            "industry": [(rng.choice(["SOFTWARE", "RETAIL", "HEALTH"]), format_ms(created))],
            "hs_lead_priority": [(rng.choice(["HIGH", "MEDIUM", "LOW"]), format_ms(created))],
            "hs_lead_status": [("NEW", format_ms(created))],
        }
        t = created + DAY_MS
        kind = rng.random()
        touches = rng.randrange(2, 30)
        for _ in range(touches):
            t += rng.randrange(DAY_MS // 4, 3 * DAY_MS)
            if t > now_ms - 2 * DAY_MS:
                break
            r = rng.random()
            if r < 0.5:
                eid = str(next(ids) + 50_000_000)
                answered = kind < 0.3 and rng.random() < 0.3
                fake.add_engagement(
                    "calls", eid, [cid], hs_timestamp=format_ms(t), hs_call_direction="OUTBOUND",
                    hs_call_disposition=CONNECTED if answered else NO_ANSWER, hs_lastmodifieddate=format_ms(t),
                )  # fmt: skip
                portal.engagements["calls"].append(eid)
            elif r < 0.85:
                eid = str(next(ids) + 60_000_000)
                reply = kind < 0.4 and rng.random() < 0.25
                fake.add_engagement(
                    "emails", eid, [cid], hs_timestamp=format_ms(t),
                    hs_email_direction="INCOMING_EMAIL" if reply else "EMAIL", hs_lastmodifieddate=format_ms(t),
                )  # fmt: skip
                portal.engagements["emails"].append(eid)
            else:
                eid = str(next(ids) + 70_000_000)
                outcome = rng.choice(["SCHEDULED", "COMPLETED", "NO_SHOW", "RESCHEDULED"])
                fake.add_engagement(
                    "meetings", eid, [cid], hs_timestamp=format_ms(t), hs_meeting_outcome=outcome,
                    hs_lastmodifieddate=format_ms(t + DAY_MS // 2),
                )  # fmt: skip
                portal.engagements["meetings"].append(eid)
        if kind > 0.93:
            history["hs_email_optout"] = [("false", format_ms(created)), ("true", format_ms(t + 1000))]
        elif kind > 0.88:
            history["lifecyclestage"] = [("lead", format_ms(created)), ("customer", format_ms(t + 1000))]
        elif kind > 0.8:
            history["hs_lead_status"].append(("OPEN", format_ms(t + 1000)))
        for name, versions in history.items():
            fake.set_history("contacts", cid, name, versions)
        if kind > 0.75:
            did = str(80_000_000 + n)
            fake.add_deal(did, cid)
            stages = [("appointmentscheduled", format_ms(created + DAY_MS))]
            if kind > 0.97:
                stages.append(("closedwon", format_ms(t + 2000)))
            fake.set_history("deals", did, "dealstage", stages)
            fake.set_history("deals", did, "amount", [(str(rng.choice([5_000, 60_000, 300_000])), stages[0][1])])
            portal.deals.append(did)
    return portal


# What each kind of contact's history is built to end in under the default policy
# (docs/lifecycle.md), as (state, loss reason), and its share of the portal. Every silence is
# an unbroken run of unanswered calls and emails sent, one a day at most (so no ISO week has the
# 10 call attempts `call_cadence_exhausted` counts), and no deal is big enough to multiply a
# threshold. The thirteenth outbound touch (guardrail 1) is always the third follow-up
# `unresponsive` waits for, so a silent lead's break-up decision is the day of that touch.
OUTCOMES: dict[str, tuple[tuple[str, str | None], float]] = {
    # Silent for 13+ touches, the decision 35-90 days ago: its 7 business days of grace are
    # over (even across Dec 24 - Jan 1 and holidays) and its 120 days to a check-in are not.
    "cold": (("LOST", "no_response"), 0.38),
    # Replied once, then three follow-ups unanswered, the third 1-3 days ago: in its grace.
    "breakup": (("BREAKUP_DUE", None), 0.12),  # no loss reason until lost
    # Long silent (lost), then a reply 2-6 days ago and at most one follow-up since.
    "replied": (("ACTIVE", None), 0.14),
    # Long silent (lost), then a rep set the lead status to OPEN 2-5 days ago.
    "reopened": (("ACTIVE", None), 0.06),
    # Fewer than 13 touches: no silence rule may fire yet, however old the silence.
    "fresh": (("ACTIVE", None), 0.10),
    # Opted out of email at some point: suppressed whatever else happened.
    "opted_out": (("SUPPRESSED", None), 0.08),
    # Became a customer (lifecycle stage), after a silence long enough to have been lost.
    "customer": (("WON", None), 0.06),
    # A deal of 5,000 reached closedwon.
    "won_deal": (("WON", None), 0.06),
}


@dataclass
class OutcomePortal(Portal):
    """A portal whose contacts were each built to end in a known state (`expected`)."""

    kind: dict[str, str] = field(default_factory=dict)  # contact id -> OUTCOMES key
    expected: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    # INCOMING_EMAIL engagements map to a reply keyed on (contact, time), not on the engagement's id.
    replies: dict[str, tuple[str, int]] = field(default_factory=dict)  # email id -> (contact id, ms)


def seed_outcomes(fake: FakeHubSpot, now_ms: int, contacts: int = 300, seed: int = 14) -> OutcomePortal:
    """Fill `fake` with `contacts` contacts whose histories end in the states of OUTCOMES.

    Histories are dated from `now_ms` (the decisions are made on the wall clock), all within the
    last 130 days; long silences make it a portal of well over 10,000 calls.
    """
    rng = random.Random(seed)
    portal = OutcomePortal()
    kinds = [k for k, (_, share) in OUTCOMES.items() for _ in range(round(share * contacts))]
    kinds = (kinds + ["cold"] * contacts)[:contacts]
    rng.shuffle(kinds)
    ids = iter(range(1, 10**9))
    for n, kind in enumerate(kinds):
        cid = str(20_001 + n)
        portal.contacts.append(cid)
        portal.kind[cid] = kind
        portal.expected[cid] = OUTCOMES[kind][0]
        _Contact(fake, portal, rng, ids, cid, n, now_ms).build(kind)
    return portal


class _Contact:
    """One contact's history: runs of touches one day apart, then what makes its outcome."""

    def __init__(self, fake: FakeHubSpot, portal: OutcomePortal, rng: random.Random, ids: Iterator[int],
                 cid: str, n: int, now_ms: int) -> None:  # fmt: skip
        self.fake, self.portal, self.rng, self.ids, self.cid, self.now_ms = fake, portal, rng, ids, cid, now_ms
        self.history: dict[str, list[tuple[str, str]]] = {}
        self.n = n

    def at(self, days_ago: float) -> int:
        """A time in the day that began `days_ago` whole days before now (so one touch a day is one a day)."""
        return self.now_ms - int(days_ago * DAY_MS) + self.rng.randrange(0, DAY_MS // 4)

    def build(self, kind: str) -> None:
        rng = self.rng
        end = rng.randrange(2, 7)  # days ago: a reply, a reopen, an opt-out, a conversion or a won deal
        if kind == "cold":
            decided = rng.randrange(35, 91)  # the 13th touch, days ago
            first = self.touches(decided + 12, rng.randrange(13, decided + 12))
        elif kind == "fresh":
            first = self.touches(rng.randrange(20, 100), rng.randrange(3, 13))
        elif kind == "breakup":
            decided = rng.randrange(1, 4)  # the third follow-up after the reply, days ago
            reply = decided + rng.randrange(15, 21)
            start = rng.randrange(reply + 40, 125)
            first = self.touches(start, rng.randrange(13, start - reply))
            self.email_in(reply)
            self.touches(decided + 2, 3)
        else:
            start = rng.randrange(end + 40, 125)
            first = self.touches(start, rng.randrange(13, start - end))
        self.profile(first - DAY_MS)
        if kind == "replied":
            self.email_in(end)
            if rng.random() < 0.5:
                self.touches(end - 1, 1)  # one follow-up since: two short of `unresponsive`
        elif kind == "reopened":
            self.history["hs_lead_status"].append(("OPEN", format_ms(self.at(end))))
        elif kind == "opted_out":
            self.history["hs_email_optout"] = [("false", format_ms(first)), ("true", format_ms(self.at(end)))]
        elif kind == "customer":
            self.history["lifecyclestage"] = [("lead", format_ms(first)), ("customer", format_ms(self.at(end)))]
        elif kind == "won_deal":
            did = str(90_000_000 + self.n)
            self.fake.add_deal(did, self.cid)
            stages = [("appointmentscheduled", format_ms(first)), ("closedwon", format_ms(self.at(end)))]
            self.fake.set_history("deals", did, "dealstage", stages)
            self.fake.set_history("deals", did, "amount", [("5000", format_ms(first))])
            self.portal.deals.append(did)
        for name, versions in self.history.items():
            self.fake.set_history("contacts", self.cid, name, versions)

    def profile(self, created: int) -> None:
        rng, when = self.rng, format_ms(created)
        self.fake.add_contact(self.cid, hubspot_owner_id=str(rng.choice([101, 102, 103])))
        self.history.update({
            "email": [(f"lead{self.n}@example.com", when)],
            "hs_analytics_source": [(rng.choice(["ORGANIC_SEARCH", "PAID_SEARCH", "REFERRALS"]), when)],
            "industry": [(rng.choice(["SOFTWARE", "RETAIL", "HEALTH"]), when)],
            "hs_lead_priority": [(rng.choice(["HIGH", "MEDIUM", "LOW"]), when)],
            "hs_lead_status": [("NEW", when)],
        })  # fmt: skip

    def touches(self, first_days_ago: int, count: int) -> int:
        """`count` unanswered calls (mostly) and emails sent, one a day from `first_days_ago`; the first's time."""
        times = [self.at(first_days_ago - k) for k in range(count)]
        for t in times:
            if self.rng.random() < 0.85:
                eid = str(next(self.ids) + 50_000_000)
                self.fake.add_engagement(
                    "calls", eid, [self.cid], hs_timestamp=format_ms(t), hs_call_direction="OUTBOUND",
                    hs_call_disposition=NO_ANSWER, hs_lastmodifieddate=format_ms(t),
                )  # fmt: skip
                self.portal.engagements["calls"].append(eid)
            else:
                eid = str(next(self.ids) + 60_000_000)
                self.fake.add_engagement("emails", eid, [self.cid], hs_timestamp=format_ms(t),
                                         hs_email_direction="EMAIL", hs_lastmodifieddate=format_ms(t))  # fmt: skip
                self.portal.engagements["emails"].append(eid)
        return times[0]

    def email_in(self, days_ago: int) -> None:
        t = self.at(days_ago)
        eid = str(next(self.ids) + 60_000_000)
        self.fake.add_engagement("emails", eid, [self.cid], hs_timestamp=format_ms(t),
                                 hs_email_direction="INCOMING_EMAIL", hs_lastmodifieddate=format_ms(t))  # fmt: skip
        self.portal.engagements["emails"].append(eid)
        self.portal.replies[eid] = (self.cid, t)
