"""How `worker/zdict/v1.bin`, the dictionary stored records are compressed with, was built.

Not a benchmark: kept so that the dictionary's origin can be read and checked. It is frozen
(records name the dictionary that packed them, and every one shipped stays readable;
tests/worker/test_compression.py pins its digest), and zstd's training is not deterministic:
running this again, even with v1's settings (these defaults), writes a dictionary of the same
kind and size but other bytes, which could only ship under a new number.

The training records come from histories deliberately unlike the benchmarks' (whose mix is
bench.common.EVENT_MIX): every event type with every data field, objections with and without
reasons, deals won, lost and reopened, opt-outs, profile changes, both CRMs, dry run and live,
leads from a few events to a few hundred. They go through the real store and decider (on
fakeredis), and the checkpoints, state records and log folds are sampled every few batches,
so the dictionary sees records at every stage of a lead's story.

    .venv/bin/python -m bench.zdict_train --out /tmp/v2.bin   # v1: these defaults (300 leads, 32 KB)
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterator
from typing import Any

import fakeredis
import zstandard

from rules.events import Crm, Event, EventType
from worker import compression, eventlog
from worker.keys import checkpoint_key, lead_key, state_key
from worker.store import LeadStore

DAY = 86_400_000
START = 1_704_067_200_000  # 2024-01-01
REASONS = ("budget", "timing", "competitor", "no need", "using another vendor", "too expensive", "")
STAGES = ("appointmentscheduled", "qualifiedtobuy", "presentationscheduled", "closedwon", "closedlost", "Prospecting")
SOURCES = ("webinar", "referral", "paid_search", "organic", "event", "partner")


def data_for(etype: EventType, rng: random.Random) -> dict[str, Any]:
    if etype is EventType.EMAIL_SENT:
        return {"follow_up": True} if rng.random() < 0.5 else {}
    if etype is EventType.EMAIL_BOUNCED:
        return {"hard": rng.random() < 0.3}
    if etype in (EventType.MEETING_BOOKED, EventType.MEETING_HELD, EventType.MEETING_NO_SHOW):
        return {"meeting_id": f"m{rng.randrange(10**6)}"} if rng.random() < 0.7 else {}
    if etype is EventType.MEETING_RESCHEDULED:
        return {"meeting_id": f"m{rng.randrange(10**6)}", "first_meeting": rng.random() < 0.5}
    if etype is EventType.NOT_INTERESTED:
        reason = rng.choice(REASONS)
        return {"reason": reason} if reason else {}
    if etype is EventType.DECISION_NO:
        return {"reason": rng.choice(REASONS) or "other"}
    if etype is EventType.PROPOSAL_SENT:
        return {"expires_at": f"2024-0{rng.randrange(1, 9)}-1{rng.randrange(10)}T12:00:00Z"}
    if etype is EventType.TIME_LOGGED:
        return {"minutes": rng.choice((5, 15, 30, 45, 60, 120))}
    if etype is EventType.DEAL_UPDATED:
        return {
            "deal_id": str(rng.randrange(10**9)),
            "amount": rng.choice((1_000, 12_500, 60_000, 300_000)),
            "stage": rng.choice(STAGES),
        }
    if etype is EventType.LEAD_PROFILE:
        return {"source": rng.choice(SOURCES), "segment": rng.choice(("smb", "mid", "ent")), "priority": "high"}
    if etype is EventType.DO_NOT_CONTACT:
        return {"channels": [rng.choice(("email", "phone", "all"))]}
    return {}


# Everything but erasures (which delete the lead, leaving nothing to sample).
TYPES = [t for t in EventType if t not in (EventType.ERASURE_REQUESTED, EventType.BREAKUP_TASK_CREATED)]
WEIGHTS = [12 if t.value.startswith(("email", "call")) else 2 for t in TYPES]


def histories(leads: int, rng: random.Random) -> Iterator[list[Event]]:
    """Batches of one event per lead, each lead a different length and pace."""
    lengths = [rng.choice((3, 8, 20, 60, 150, 300)) for _ in range(leads)]
    paces = [rng.choice((1, 3, 7, 20)) * DAY for _ in range(leads)]
    for step in range(max(lengths)):
        batch = []
        for i in range(leads):
            if step >= lengths[i]:
                continue
            crm = Crm.SALESFORCE if i % 4 == 0 else Crm.HUBSPOT
            lead = f"00Q{i:012d}" if crm is Crm.SALESFORCE else str(7_000_000 + i * 37)
            etype = rng.choices(TYPES, WEIGHTS)[0]
            at = START + step * paces[i] + rng.randrange(DAY)
            batch.append(Event(f"z{step}-{i}", etype, crm, lead, at, data_for(etype, rng)))
        yield batch


def _without_the_dictionary() -> None:
    """Let the store run while no dictionary exists yet (the records are unpacked again anyway)."""
    placeholder = zstandard.ZstdCompressionDict(b"pruner" * 16, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    compression._dictionary = lambda number: placeholder  # type: ignore[assignment]
    compression._compressor.cache_clear()
    compression._decompressor.cache_clear()


def samples(leads: int, seed: int) -> list[bytes]:
    from bench.common import child_env
    from worker.config import Config
    from worker.jobs import decider

    _without_the_dictionary()
    rng = random.Random(seed)
    out: list[bytes] = []
    for dry in ("1", "0"):
        conn = fakeredis.FakeRedis()
        store = LeadStore(conn)
        env = {**child_env(), "PRUNER_DRY_RUN": dry}
        decide = decider(Config.from_env(env), START + 800 * DAY)
        for n, batch in enumerate(histories(leads // 2, rng)):
            store.apply_batch(batch, decide)
            if n % 7 == 3:
                for ev in batch[::5]:
                    for key in (state_key(ev.crm, ev.lead_id), checkpoint_key(ev.crm, ev.lead_id)):
                        raw = conn.get(key)
                        if raw:
                            out.append(compression.unpack(raw))
                    log = eventlog.read(conn.get(lead_key(ev.crm, ev.lead_id)))
                    if log.fold is not None:
                        out.append(eventlog.fold_bytes(log.fold))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.zdict_train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--leads", type=int, default=300)
    p.add_argument("--size", type=int, default=32768, help="dictionary bytes (32768)")
    p.add_argument("--seed", type=int, default=20261205)
    args = p.parse_args(argv)
    corpus = samples(args.leads, args.seed)
    trained = zstandard.train_dictionary(args.size, corpus, level=compression.LEVEL, threads=1)
    with open(args.out, "wb") as fh:
        fh.write(trained.as_bytes())
    print(f"{len(corpus)} records, {sum(map(len, corpus))} bytes -> {args.out} ({len(trained.as_bytes())} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
