//! The task store's Lua scripts: every change of a task's state is one of
//! them, run atomically by Redis.

/// Lua helpers every script starts with.
pub(super) const PRELUDE: &str = r#"
local function drop(queue, entry)
  redis.call('XACK', queue, 'workers', entry)
  redis.call('XDEL', queue, entry)
end
local function move(counts, from, to)
  redis.call('HINCRBY', counts, from, -1)
  redis.call('HINCRBY', counts, to, 1)
end
-- A task that has just ended is due for its webhook, if it has one.
local function due(task, webhooks, now, id)
  if redis.call('HEXISTS', task, 'webhook_url') == 1 then redis.call('ZADD', webhooks, now, id) end
end
"#;

/// KEYS: task, owner's index, sequence, queue, pending, counts, pending per owner.
/// ARGV: id, owner, request, now, webhook url or ''.
pub(super) const CREATE: &str = r#"
local seq = redis.call('INCR', KEYS[3])
local entry = redis.call('XADD', KEYS[4], '*', 'id', ARGV[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'status', 'pending', 'request', ARGV[3],
  'created_at', ARGV[4], 'attempts', 0, 'seq', seq, 'entry', entry)
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'webhook_url', ARGV[5]) end
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[4], ARGV[1])
redis.call('HINCRBY', KEYS[6], 'pending', 1)
redis.call('HINCRBY', KEYS[7], ARGV[2], 1)
return seq
"#;

/// KEYS: queue, counts, pending, ended.
/// ARGV: consumer, lease ms, on_abandoned, now, prefix.
/// An abandoned entry first, else a new one; entries of tasks that ended
/// while queued (cancelled) are dropped on the way.
pub(super) const CLAIM: &str = r#"
for _ = 1, 100 do
  -- XAUTOCLAIM looks at ten pending entries per call: follow its cursor, so
  -- an abandoned entry behind many live ones is still found.
  local reclaimed, cursor, got = true, '0-0', {}
  repeat
    local reply = redis.call('XAUTOCLAIM', KEYS[1], 'workers', ARGV[1], ARGV[2], cursor, 'COUNT', 1)
    cursor, got = reply[1], reply[2]
  until #got > 0 or cursor == '0-0'
  if #got == 0 then
    reclaimed = false
    local read = redis.call('XREADGROUP', 'GROUP', 'workers', ARGV[1], 'COUNT', 1, 'STREAMS', KEYS[1], '>')
    if not read or #read[1][2] == 0 then return false end
    got = read[1][2]
  end
  local entry, fields = got[1][1], got[1][2]
  local id = fields and fields[2]
  local key = id and (ARGV[5] .. 'task:' .. id)
  local status = key and redis.call('HGET', key, 'status')
  if status == 'running' and reclaimed and ARGV[3] == 'fail' then
    redis.call('HSET', key, 'status', 'failed', 'completed_at', ARGV[4],
      'error', 'the replica running this task stopped')
    move(KEYS[2], 'running', 'failed')
    due(key, ARGV[5] .. 'webhooks', ARGV[4], id)
    redis.call('ZADD', KEYS[4], ARGV[4], id)
    drop(KEYS[1], entry)
  elseif status == 'pending' or (status == 'running' and reclaimed) then
    if status == 'pending' then
      move(KEYS[2], 'pending', 'running')
      redis.call('ZREM', KEYS[3], id)
      redis.call('HINCRBY', ARGV[5] .. 'pending_by_owner', redis.call('HGET', key, 'owner'), -1)
    end
    redis.call('HSET', key, 'status', 'running', 'started_at', ARGV[4], 'entry', entry, 'worker', ARGV[1])
    redis.call('HINCRBY', key, 'attempts', 1)
    return id
  else
    drop(KEYS[1], entry)
  end
end
return false
"#;

/// KEYS: task, queue. ARGV: consumer, attempts.
pub(super) const HEARTBEAT: &str = r#"
local status, attempts, entry = unpack(redis.call('HMGET', KEYS[1], 'status', 'attempts', 'entry'))
if status ~= 'running' or attempts ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[2], 'workers', ARGV[1], 0, entry, 'JUSTID')
return 1
"#;

/// KEYS: task, queue, counts, ended, webhooks. ARGV: attempts, status, now, result, error, id.
pub(super) const FINISH: &str = r#"
local status, attempts, entry = unpack(redis.call('HMGET', KEYS[1], 'status', 'attempts', 'entry'))
if status ~= 'running' or attempts ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'completed_at', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[5]) end
move(KEYS[3], 'running', ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[6])
due(KEYS[1], KEYS[5], ARGV[3], ARGV[6])
drop(KEYS[2], entry)
return 1
"#;

/// KEYS: task, queue, counts, pending, ended, pending per owner. ARGV: owner, now, id.
pub(super) const CANCEL: &str = r#"
local owner, status, entry = unpack(redis.call('HMGET', KEYS[1], 'owner', 'status', 'entry'))
if owner ~= ARGV[1] then return 0 end
if status == 'pending' then redis.call('HINCRBY', KEYS[6], owner, -1) end
if status == 'pending' or status == 'running' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'completed_at', ARGV[2], 'error', 'cancelled by the client')
  move(KEYS[3], status, 'cancelled')
  redis.call('ZREM', KEYS[4], ARGV[3])
  redis.call('ZADD', KEYS[5], ARGV[2], ARGV[3])
  drop(KEYS[2], entry)
end
return 1
"#;

/// Tasks one call of [`EXPIRE`] deletes at most.
pub(super) const EXPIRE_BATCH: usize = 1000;

/// KEYS: ended, counts. ARGV: cutoff, prefix.
pub(super) const EXPIRE: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, 1000)
for _, id in ipairs(ids) do
  local key = ARGV[2] .. 'task:' .. id
  local owner, status = unpack(redis.call('HMGET', key, 'owner', 'status'))
  if owner then redis.call('ZREM', ARGV[2] .. 'owner:' .. owner, id) end
  if status then redis.call('HINCRBY', KEYS[2], status, -1) end
  redis.call('DEL', key, key .. ':deliveries')
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', ARGV[2] .. 'webhooks', id)
end
return #ids
"#;

/// KEYS: pending, counts, ended, queue, webhooks, pending per owner.
/// ARGV: cutoff, now, reason, prefix. A thousand at a time, like [`EXPIRE`].
pub(super) const FAIL_PENDING: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, 1000)
for _, id in ipairs(ids) do
  local key = ARGV[4] .. 'task:' .. id
  local owner, entry = unpack(redis.call('HMGET', key, 'owner', 'entry'))
  redis.call('HSET', key, 'status', 'failed', 'completed_at', ARGV[2], 'error', ARGV[3])
  move(KEYS[2], 'pending', 'failed')
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[3], ARGV[2], id)
  if owner then redis.call('HINCRBY', KEYS[6], owner, -1) end
  due(key, KEYS[5], ARGV[2], id)
  if entry then drop(KEYS[4], entry) end
end
return #ids
"#;

/// KEYS: task, queue, counts, pending, ended, webhooks, pending per owner,
/// owner's index. ARGV: owner, id.
pub(super) const DELETE: &str = r#"
local owner, status, entry = unpack(redis.call('HMGET', KEYS[1], 'owner', 'status', 'entry'))
if owner ~= ARGV[1] then return 0 end
if status == 'pending' then
  redis.call('HINCRBY', KEYS[7], owner, -1)
  redis.call('ZREM', KEYS[4], ARGV[2])
end
if (status == 'pending' or status == 'running') and entry then drop(KEYS[2], entry) end
if status then redis.call('HINCRBY', KEYS[3], status, -1) end
redis.call('DEL', KEYS[1], KEYS[1] .. ':deliveries')
redis.call('ZREM', KEYS[8], ARGV[2])
redis.call('ZREM', KEYS[5], ARGV[2])
redis.call('ZREM', KEYS[6], ARGV[2])
return 1
"#;

/// KEYS: webhooks. ARGV: now, lease ms, prefix. The soonest due delivery,
/// leased; deliveries of tasks deleted meanwhile are dropped on the way.
pub(super) const CLAIM_DELIVERY: &str = r#"
for _ = 1, 100 do
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
  if #due == 0 then return false end
  if redis.call('EXISTS', ARGV[3] .. 'task:' .. due[1]) == 1 then
    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), due[1])
    return due[1]
  end
  redis.call('ZREM', KEYS[1], due[1])
end
return false
"#;

/// KEYS: task, its deliveries, webhooks. ARGV: attempt, next due or '', id.
pub(super) const RECORD_DELIVERY: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[3], ARGV[3])
  return 0
end
redis.call('RPUSH', KEYS[2], ARGV[1])
if ARGV[2] == '' then
  redis.call('ZREM', KEYS[3], ARGV[3])
else
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
end
return 1
"#;
