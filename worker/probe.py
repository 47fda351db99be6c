"""The redelivery probe: which of a batch's live leads hold none of its events, asked of Redis.

A redelivery may carry another date than the first delivery (Salesforce re-sends an edited
Task under its id), so a live batch cannot tell one from its dates. The batch's dedup keys are
looked for in the leads' logs inside Redis, by a short Lua script, so the logs need not travel.
A hit (or a key-like run of bytes inside a record, no more than a 2^-48 chance) sends the lead
down the store's exact path, which reads its log. The script also answers each log's version
byte: what is appended to a log must be in its records (worker/eventlog.py `record_format`).
"""

from __future__ import annotations

from typing import Any

from worker import eventlog

# For each log (KEYS[i]): 1 when one of the dedup keys packed in ARGV[i] occurs in it, + 2 x the
# log's version byte (0: no log, or an empty value).
_SCRIPT = """
local out = {}
for i, key in ipairs(KEYS) do
  local blob = redis.call('GET', key)
  local found = 0
  if blob then
    local probes = ARGV[i]
    for j = 1, #probes, KEY_BYTES do
      if string.find(blob, string.sub(probes, j, j + KEY_BYTES - 1), 2, true) then
        found = 1
        break
      end
    end
    if #blob > 0 then
      found = found + 2 * string.byte(blob, 1)
    end
  end
  out[i] = found
end
return out
""".replace("KEY_BYTES", str(eventlog.KEY_BYTES))
_HIT = 1


def clean(pipe: Any, logs: list[str], keys: list[bytes]) -> list[tuple[int, bool] | None]:
    """For each log, given the dedup keys of its new events (concatenated): None when one of them
    is in it, or its version is unknown (its reader will say what is wrong); otherwise the record
    format to append in and whether the log exists (no log, or an empty value: the append starts
    it with its version byte)."""
    if not logs:
        return []
    answers: list[int] = pipe.eval(_SCRIPT, len(logs), *logs, *keys)
    out: list[tuple[int, bool] | None] = []
    for found in answers:
        version = found >> 1
        if found & _HIT:
            out.append(None)
        elif version == 0:
            out.append((eventlog.RECORDS_12, False))
        else:
            try:
                out.append((eventlog.format_of_version(version), True))
            except ValueError:
                out.append(None)
    return out
