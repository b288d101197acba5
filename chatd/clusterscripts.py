"""The Lua scripts the cluster uplink runs in Redis: each one step, atomic.

Keys (all under `chatd:`): `seq` the newest message id; `log` the stream every host reads;
`epoch` a random name of this Redis's data set (a Redis that lost its data has none, so a
new one is made and hosts notice the change); `lease:NODE` the incarnation of the host
named NODE, set with an expiry the host keeps pushing back; `nodes` the set of node names;
`m:NODE` a hash nick -> rooms (space-separated) of the host's sessions; `nick:KEY` the
owner of a nick (`NODE<TAB>INCARNATION<TAB>NICK`), valid while that lease holds; `topic`
a hash room -> packed [topic, by, ts]; `acct` a hash nick key -> the account that owns
the nick (chatd.accounts.record: its name first, then its verifier); `rid:NODE:INC:N`
what a write returned, for a while, so a write retried after a lost connection is
carried out once.

Stream entry ids carry the chatd message id: a message is `ID-0`, any other event
`SEQ-N` (after the newest message). So a host's cursor is meaningful even after Redis lost
its data (the sequence is raised to the highest id any host has seen, see SYNC).
Fields: k kind (m room message, o a change of a room's policy, d direct message, j join,
p part, q quit, n nick, t topic, s a host's whole membership, g a host gone, a an account
registered, P an account made a room's operator by opening it, K a session ended by a
server operator, S an administrator's server ban or unban), n node,
r the write's number, ts (Redis's clock, ms), d the event's packed body (a: the
record), t (d: the target's nick), o (d: '1' when the target is an account).
"""

from __future__ import annotations

# The shared start of every write: the host must hold its lease. ARGV[1] node, ARGV[2]
# incarnation, ARGV[3] write number, ARGV[4] stream length.
_PRELUDE = """
local P = 'chatd:'
local node, inc, rid, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local rkey = P .. 'rid:' .. node .. ':' .. inc .. ':' .. rid
local done = redis.call('GET', rkey)
if done then return cmsgpack.unpack(done) end
if redis.call('GET', P .. 'lease:' .. node) ~= inc then
  return redis.error_reply('LEASE this host is not registered with the cluster')
end
local now = redis.call('TIME')
local ts = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local function owner_alive(owner)
  local onode, oinc = string.match(owner, '^([^\\t]*)\\t([^\\t]*)\\t')
  if onode == node and oinc == inc then return 'me' end
  if onode and redis.call('GET', P .. 'lease:' .. onode) == oinc then return 'other' end
  return nil
end
local function event(kind, body)
  local seq = redis.call('GET', P .. 'seq') or '0'
  redis.call('XADD', P .. 'log', 'MAXLEN', '~', maxlen, seq .. '-*', 'k', kind, 'n', node,
             'r', rid, 'ts', ts, 'd', body)
end
local function finish(reply)
  redis.call('SET', rkey, cmsgpack.pack(reply), 'EX', 120)
  return reply
end
"""

# A message. ARGV[5] 'm' or 'd', ARGV[6] the packed body, ARGV[7] (d) the target's key.
# Returns {id, ts, target nick}; id 0: no such nick. A direct message to an account's
# nick is accepted whether or not a session of it is online (it waits in history).
MESSAGE = _PRELUDE + """
local kind, body = ARGV[5], ARGV[6]
local target, owned = '', ''
if kind == 'd' then
  local account = redis.call('HGET', P .. 'acct', ARGV[7])
  if account then
    target, owned = string.match(account, '^([^ ]*)'), '1'
  else
    local owner = redis.call('GET', P .. 'nick:' .. ARGV[7])
    if not owner or not owner_alive(owner) then return {0, 0, ''} end
    target = string.match(owner, '\\t([^\\t]*)$')
  end
end
local id = redis.call('INCR', P .. 'seq')
redis.call('XADD', P .. 'log', 'MAXLEN', '~', maxlen, id .. '-0', 'k', kind, 'n', node,
           'r', rid, 'ts', ts, 'd', body, 't', target, 'o', owned)
return finish({id, ts, target})
"""

# A nick taken (hello: no old nick) or changed. ARGV[5] new key, ARGV[6] new nick,
# ARGV[7] old key, ARGV[8] old nick, ARGV[9] rooms, ARGV[10] the event's body, ARGV[11]
# '1' when the session is logged in to the account that owns the new nick (its sessions
# on every host share it). Returns {1}, {0} (taken by a session of another live host) or
# {2} (an account owns it).
NICK = _PRELUDE + """
local newkey, new, oldkey, old, rooms = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
if ARGV[11] ~= '1' then
  if redis.call('HEXISTS', P .. 'acct', newkey) == 1 then return finish({2}) end
  local owner = redis.call('GET', P .. 'nick:' .. newkey)
  if owner and owner_alive(owner) == 'other' then return finish({0}) end
end
redis.call('SET', P .. 'nick:' .. newkey, node .. '\\t' .. inc .. '\\t' .. new)
if old ~= '' then
  if oldkey ~= newkey then
    local held = redis.call('GET', P .. 'nick:' .. oldkey)
    if held and owner_alive(held) == 'me' then redis.call('DEL', P .. 'nick:' .. oldkey) end
  end
  redis.call('HDEL', P .. 'm:' .. node, old)
end
redis.call('HSET', P .. 'm:' .. node, new, rooms)
if old ~= '' then event('n', ARGV[10]) end
return finish({1})
"""

# An account registered on this host (its auth helper has it): the cluster's unless
# another host registered the name first, or a session of another host holds the nick.
# ARGV[5] the nick key, ARGV[6] the record. Returns {1}, {0, the record Redis has}, {2}.
ACCOUNT = _PRELUDE + """
local key, record = ARGV[5], ARGV[6]
local have = redis.call('HGET', P .. 'acct', key)
if have then return finish({0, have}) end
local owner = redis.call('GET', P .. 'nick:' .. key)
if owner and owner_alive(owner) == 'other' then return finish({2, ''}) end
redis.call('HSET', P .. 'acct', key, record)
event('a', record)
return finish({1, ''})
"""

# A membership, topic or other event. ARGV[5] kind (j p q t, or P K S: nothing kept),
# ARGV[6] body, ARGV[7] nick, ARGV[8] nick key, ARGV[9] rooms (j p), or the room (t),
# ARGV[10] (t) packed topic.
EVENT = _PRELUDE + """
local kind, body, nick, key = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
if kind == 'q' then
  redis.call('HDEL', P .. 'm:' .. node, nick)
  local held = redis.call('GET', P .. 'nick:' .. key)
  if held and owner_alive(held) == 'me' then redis.call('DEL', P .. 'nick:' .. key) end
elseif kind == 't' then
  redis.call('HSET', P .. 'topic', ARGV[9], ARGV[10])
elseif kind ~= 'P' and kind ~= 'K' and kind ~= 'S' then
  redis.call('HSET', P .. 'm:' .. node, nick, ARGV[9])
end
event(kind, body)
return finish({1})
"""

# On every (re)connection: the epoch (made when missing), the sequence raised to at least
# this host's newest id, this host registered (a previous incarnation's sessions are gone:
# a `g` event says so), and a snapshot of the cluster: the stream's newest id, every live
# host's membership, the topics and the accounts. ARGV: node, incarnation, a new epoch,
# newest id, lease ms, stream length.
SYNC = """
local P = 'chatd:'
local node, inc, fresh, last, ttl, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local epoch = redis.call('GET', P .. 'epoch')
if not epoch then epoch = fresh; redis.call('SET', P .. 'epoch', epoch) end
local seq = tonumber(redis.call('GET', P .. 'seq') or '0')
if seq < tonumber(last) then redis.call('SET', P .. 'seq', last) end
local before = redis.call('GET', P .. 'lease:' .. node)
if before and before ~= inc then
  redis.call('DEL', P .. 'm:' .. node)
  local now = redis.call('TIME')
  local ts = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('XADD', P .. 'log', 'MAXLEN', '~', maxlen,
             (redis.call('GET', P .. 'seq') or '0') .. '-*', 'k', 'g', 'n', node, 'r', '0',
             'ts', ts, 'd', before)
end
redis.call('SET', P .. 'lease:' .. node, inc, 'PX', ttl)
redis.call('SADD', P .. 'nodes', node)
local top = redis.call('XREVRANGE', P .. 'log', '+', '-', 'COUNT', 1)
local point = '0-0'
if top[1] then point = top[1][1] end
local hosts = {}
for _, other in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
  if other ~= node and redis.call('EXISTS', P .. 'lease:' .. other) == 1 then
    table.insert(hosts, other)
    table.insert(hosts, redis.call('HGETALL', P .. 'm:' .. other))
  end
end
return {epoch, point, hosts, redis.call('HGETALL', P .. 'topic'),
        redis.call('HVALS', P .. 'acct')}
"""

# After SYNC, the host's sessions as they are now: nicks claimed again (those another live
# host took meanwhile are returned; an account's nick is its sessions' on every host),
# the membership hash rewritten, and an `s` event with it for the other hosts. ARGV:
# node, incarnation, stream length, then key, nick, rooms triples.
STATE = """
local P = 'chatd:'
local node, inc, maxlen = ARGV[1], ARGV[2], ARGV[3]
if redis.call('GET', P .. 'lease:' .. node) ~= inc then
  return redis.error_reply('LEASE this host is not registered with the cluster')
end
local mine = node .. '\\t' .. inc .. '\\t'
local lost, now = {}, {}
redis.call('DEL', P .. 'm:' .. node)
for i = 4, #ARGV, 3 do
  local key, nick, rooms = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local owner = redis.call('GET', P .. 'nick:' .. key)
  local onode, oinc = nil, nil
  if owner then onode, oinc = string.match(owner, '^([^\\t]*)\\t([^\\t]*)\\t') end
  if owner and not (onode == node and oinc == inc)
     and redis.call('GET', P .. 'lease:' .. onode) == oinc
     and redis.call('HEXISTS', P .. 'acct', key) == 0 then
    table.insert(lost, nick)
  else
    redis.call('SET', P .. 'nick:' .. key, mine .. nick)
    redis.call('HSET', P .. 'm:' .. node, nick, rooms)
    now[nick] = rooms
  end
end
local t = redis.call('TIME')
local ts = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', P .. 'log', 'MAXLEN', '~', maxlen,
           (redis.call('GET', P .. 'seq') or '0') .. '-*', 'k', 's', 'n', node, 'r', '0',
           'ts', ts, 'd', cmsgpack.pack(now))
return lost
"""

# Keep the lease: 1, or 0 when it expired or another incarnation holds it (the host then
# registers again). ARGV: node, incarnation, lease ms.
RENEW = """
if redis.call('GET', 'chatd:lease:' .. ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('PEXPIRE', 'chatd:lease:' .. ARGV[1], ARGV[3])
return 1
"""

# A host whose lease expired is gone: its membership goes, and a `g` event tells every
# host. ARGV: the node, stream length. 1 if it was reaped now.
REAP = """
local P = 'chatd:'
local node = ARGV[1]
if redis.call('EXISTS', P .. 'lease:' .. node) == 1 then return 0 end
redis.call('SREM', P .. 'nodes', node)
redis.call('DEL', P .. 'm:' .. node)
local t = redis.call('TIME')
local ts = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', P .. 'log', 'MAXLEN', '~', ARGV[2],
           (redis.call('GET', P .. 'seq') or '0') .. '-*', 'k', 'g', 'n', node, 'r', '0',
           'ts', ts, 'd', '')
return 1
"""
