"""A fake HubSpot portal with realistic histories, for backfill tests: seeded, deterministic, dated from `now_ms`.

Each contact gets a profile (source, industry, priority, email, owner) whose values are
dated by their property history, and a history of calls (mostly unanswered), emails sent,
some replies, meetings booked, held or missed; some opt out, some become customers, some
have a deal (won or still open). Everything happens before `now_ms` minus a day, so that
evaluating at `now_ms` or a little later gives the same states.
"""

from __future__ import annotations

import random
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
