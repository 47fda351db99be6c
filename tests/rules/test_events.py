"""rules/events.py helpers not covered by the schema tests."""

from __future__ import annotations

from rules.events import Crm, Event, EventType, mend_text


def test_mend_text_replaces_unpaired_surrogates_wherever_they_are_in_data() -> None:
    clean = Event("e1", EventType.LEAD_PROFILE, Crm.HUBSPOT, "L", 1, {"source": "Web 😀", "n": 1.5})
    assert mend_text(clean) is clean
    broken = clean._replace(data={"source": "Web\ud83d", "channels": ["\udfffemail"], "x": {"k\ud800": "v"}})
    assert mend_text(broken).data == {"source": "Web\ufffd", "channels": ["\ufffdemail"], "x": {"k\ufffd": "v"}}
