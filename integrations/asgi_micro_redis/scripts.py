"""The Lua scripts of the Redis broker: the steps that must see and change a consumer group's
pending entries in one go (Redis runs a script atomically).

Each takes the stream as ``KEYS[1]`` and the group and this member's consumer name as
``ARGV[1]`` and ``ARGV[2]``. Idle times are in milliseconds, as Redis counts them: an entry's
idle time is how long ago it was last delivered, and whoever claims an entry idle for longer
than the reclaim time takes it over.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CLAIM", "CLEAN", "RELEASE", "TOUCH"]

CLAIM: Final = """
-- Claims entries idle for at least ARGV[3] ms and returns them with how often each was
-- delivered, counting this delivery (XAUTOCLAIM and XCLAIM do not say; XPENDING does):
-- {next cursor, entries, ids trimmed from the stream, delivery counts}.
-- ARGV[4] = 'scan': XAUTOCLAIM from the cursor ARGV[5], at most ARGV[6] entries;
-- ARGV[4] = 'ids': XCLAIM the ids ARGV[5..].
local key, group, consumer, idle = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local cursor, entries, trimmed = '0-0', {}, {}
if ARGV[4] == 'scan' then
  local reply = redis.call('XAUTOCLAIM', key, group, consumer, idle, ARGV[5], 'COUNT', ARGV[6])
  cursor, entries, trimmed = reply[1], reply[2], reply[3] or {}
else
  entries = redis.call('XCLAIM', key, group, consumer, idle, unpack(ARGV, 5))
end
local counts = {}
for i, entry in ipairs(entries) do
  counts[i] = 0
  if entry then
    local pending = redis.call('XPENDING', key, group, entry[1], entry[1], 1)[1]
    if pending then counts[i] = pending[4] end
  end
end
return {cursor, entries, trimmed, counts}
"""

TOUCH: Final = """
-- Sets the idle time of the entries ARGV[4..] that this consumer still owns to ARGV[3] ms,
-- without counting a delivery; returns how many it owns. Idle 0 keeps an entry that is being
-- handled from being reclaimed; (reclaim time - delay) makes it due for reclaiming after delay.
local key, group, consumer, idle = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local owned = 0
for i = 4, #ARGV do
  local pending = redis.call('XPENDING', key, group, ARGV[i], ARGV[i], 1)[1]
  if pending and pending[2] == consumer then
    redis.call('XCLAIM', key, group, consumer, 0, ARGV[i], 'IDLE', idle, 'JUSTID')
    owned = owned + 1
  end
end
return owned
"""

RELEASE: Final = """
-- A member leaving: makes what this consumer still owns due for reclaiming at once (idle
-- ARGV[3] ms), except the ARGV[4] ids ARGV[5..] that were nacked (they are due when their delay
-- ends). An entry that never reached a handler (its reply was lost when the read was cancelled)
-- gets its delivery back, unless it is among the ids after those, whose handling was not
-- settled. A consumer that owns nothing is deleted. Returns how many entries it released.
local key, group, consumer, idle = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local nacked, handled = {}, {}
local count = tonumber(ARGV[4])
for i = 5, 4 + count do nacked[ARGV[i]] = true end
for i = 5 + count, #ARGV do handled[ARGV[i]] = true end
local pending = redis.call('XPENDING', key, group, '-', '+', 100000, consumer)
local released = 0
for _, entry in ipairs(pending) do
  local id, deliveries = entry[1], entry[4]
  if not nacked[id] then
    if not handled[id] and deliveries > 0 then deliveries = deliveries - 1 end
    redis.call('XCLAIM', key, group, consumer, 0, id, 'IDLE', idle,
               'RETRYCOUNT', deliveries, 'JUSTID')
    released = released + 1
  end
end
if #pending == 0 then redis.call('XGROUP', 'DELCONSUMER', key, group, consumer) end
return released
"""

CLEAN: Final = """
-- Deletes the consumers of the group that own nothing and were last seen more than ARGV[3] ms
-- ago (members that were killed, once their entries were reclaimed). Deleting one loses nothing,
-- and a live member that was only quiet is made again by its next read. Returns how many.
local key, group, idle = KEYS[1], ARGV[1], tonumber(ARGV[3])
local removed = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', key, group)) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info['pending'] == 0 and info['idle'] > idle and info['name'] ~= ARGV[2] then
    redis.call('XGROUP', 'DELCONSUMER', key, group, info['name'])
    removed = removed + 1
  end
end
return removed
"""
