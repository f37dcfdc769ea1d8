//! The Lua scripts: one per operation, each touching exactly one key (the
//! record, `KEYS[1]`), so each runs atomically on one node, Cluster
//! included. No WATCH/MULTI, no second key, no global counter.
//!
//! # The record
//!
//! One hash per logical key:
//!
//! | field | holds |
//! |---|---|
//! | `s` | state: `p` in progress, `a` abandoned, `c` completed |
//! | `f` | the request fingerprint (16 bytes), empty for none |
//! | `t` | the fencing token (decimal): `max(previous + 1, server TIME in µs)`; once completed, the completing claim's token |
//! | `d` | in progress or abandoned, the holder: the lease deadline and the claim's start (server µs, two big-endian doubles, exact below 2^53) then the claim id (16 bytes); once completed, the encoded value |
//!
//! The key's own TTL collects garbage and dates the record: lease + grace
//! while in progress or abandoned (the grace keeps the token, so fencing
//! outlives a lapse), the retention once completed, so a completed
//! record's time left is its `PTTL` (no expiry field, and no `TIME` call
//! in `complete`). A lapsed claim (deadline passed) is free: peek says so
//! and a claim takes it over with a larger token.
//!
//! # Cost
//!
//! Each `redis.call` from Lua costs about a microsecond of server time on
//! top of the command itself, so the scripts make as few as the protocol
//! allows: a claim of a free key `HMGET`, `TIME`, `HSET`, `PEXPIRE`; a
//! complete `HMGET`, `HSET` (state and value over the holder, one field),
//! `PEXPIRE`; a replay `HMGET`, `PTTL`. Replies carry only what the client
//! does not know already (a fresh acquisition answers its token, not the
//! lease the client asked for).
//!
//! # Memory
//!
//! Every script starts with a `#!lua` shebang, so Redis checks `maxmemory`
//! before running it (a script without one can write past the limit).
//! `claim` has no flags, so it is refused when Redis is out of memory (the
//! store then peeks, and answers `Full` only for a free key); `complete`,
//! `release`, `renew`, `abandon` and `remove` carry `allow-oom`, so claims
//! already admitted can finish; `peek` is `no-writes`.
//!
//! Numbers: Lua numbers are doubles, exact to 2^53; server µs are about
//! 2^51. The token is written with `%.0f` (Lua's `tostring` would round
//! it); the holder's times are packed as doubles (`struct.pack`).

use std::sync::LazyLock;

use redis::Script;

/// The part of `claim` and `peek` that reads the record and answers for a
/// live one. ARGV: fingerprint (empty: none), claim id (empty: none).
/// `TIME` is only asked for a record that is not completed.
macro_rules! lookup {
    () => {
        r#"
local key = KEYS[1]
local fp, cid = ARGV[1], ARGV[2]
local r = redis.call('HMGET', key, 's', 'f', 't', 'd')
local s, f = r[1], r[2] or ''
local mismatch = fp ~= '' and f ~= '' and f ~= fp
if s == 'c' then
  if mismatch then return {'M'} end
  return {'C', r[4] or '', f, math.max(redis.call('PTTL', key), 0) * 1000}
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local prev = 0
if s then
  prev = tonumber(r[3]) or 0
  local holder = r[4] or ''
  local deadline, began = 0, now
  if #holder >= 16 then deadline, began = struct.unpack('>dd', holder) end
  if deadline > now then
    if mismatch then return {'M'} end
    if s == 'p' and cid ~= '' and string.sub(holder, 17) == cid then
      return {'A', r[3], deadline - now}
    end
    return {'P', r[3], f, deadline - now, math.max(now - began, 0), s == 'a' and 1 or 0}
  end
end
"#
    };
}

/// Reads and checks the holder: state `p` and token `ARGV[1]`, or answers
/// fenced (`X`). `r[3]` is the holder (`d`).
macro_rules! holder {
    () => {
        r#"
local key = KEYS[1]
local token = ARGV[1]
local r = redis.call('HMGET', key, 's', 't', 'd')
if r[1] ~= 'p' or r[2] ~= token then return {'X'} end
"#
    };
}

/// `claim`: ARGV fingerprint, claim id, lease ms, grace ms. Answers
/// `M` | `C value fp expires_in_us` | `A token` (acquired now, for the
/// whole lease asked) | `A token lease_left_us` (this claim id's
/// acquisition, resent) | `P token fp lease_us running_us abandoned`.
pub(crate) const CLAIM: &str = concat!(
    "#!lua\n",
    lookup!(),
    r#"
local lease_ms, grace_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
local token = string.format('%.0f', math.max(prev + 1, now))
local holder = struct.pack('>dd', now + lease_ms * 1000, now) .. cid
redis.call('HSET', key, 's', 'p', 'f', fp, 't', token, 'd', holder)
redis.call('PEXPIRE', key, lease_ms + grace_ms)
return {'A', token}
"#
);

/// `peek`: ARGV fingerprint, claim id (empty: none). Answers as `claim`
/// does, or `F` for a free key; never writes.
pub(crate) const PEEK: &str = concat!("#!lua flags=no-writes\n", lookup!(), "return {'F'}\n");

/// `complete`: ARGV token, value, retention ms. Answers `S` (stored now,
/// for the retention asked), `S expires_in_us` (a complete resent with
/// the completing token: changes nothing) or `X` (fenced).
pub(crate) const COMPLETE: &str = r#"#!lua flags=allow-oom
local key = KEYS[1]
local token = ARGV[1]
local r = redis.call('HMGET', key, 's', 't')
if r[2] == token then
  if r[1] == 'p' then
    redis.call('HSET', key, 's', 'c', 'd', ARGV[2])
    redis.call('PEXPIRE', key, ARGV[3])
    return {'S'}
  end
  if r[1] == 'c' then
    return {'S', math.max(redis.call('PTTL', key), 0) * 1000}
  end
end
return {'X'}
"#;

/// `release`: ARGV token. Deletes the record (nothing kept, not even the
/// fingerprint). Answers `K` or `X`.
pub(crate) const RELEASE: &str = concat!(
    "#!lua flags=allow-oom\n",
    holder!(),
    r#"
redis.call('DEL', key)
return {'K'}
"#
);

/// `renew`: ARGV token, lease ms, grace ms. Answers `R` (renewed for the
/// whole lease asked) or `X`.
pub(crate) const RENEW: &str = concat!(
    "#!lua flags=allow-oom\n",
    holder!(),
    r#"
local lease_ms, grace_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local old = r[3] or ''
local began = now
if #old >= 16 then
  local _, b = struct.unpack('>dd', old)
  began = b
end
local holder = struct.pack('>dd', now + lease_ms * 1000, began) .. string.sub(old, 17)
redis.call('HSET', key, 'd', holder)
redis.call('PEXPIRE', key, lease_ms + grace_ms)
return {'R'}
"#
);

/// `abandon`: ARGV token. Marks the claim abandoned; the key stays held
/// until its lease lapses (its TTL is unchanged). Answers `K` or `X`.
pub(crate) const ABANDON: &str = concat!(
    "#!lua flags=allow-oom\n",
    holder!(),
    r#"
redis.call('HSET', key, 's', 'a')
return {'K'}
"#
);

/// `remove`: deletes a completed record. Answers 1, or 0 for anything
/// else (a claim in progress keeps its key).
pub(crate) const REMOVE: &str = r#"#!lua flags=allow-oom
local key = KEYS[1]
if redis.call('HGET', key, 's') == 'c' then
  redis.call('DEL', key)
  return 1
end
return 0
"#;

/// Every script, by operation name, with its loaded [`Script`].
pub(crate) struct Scripts {
    pub(crate) claim: Script,
    pub(crate) peek: Script,
    pub(crate) complete: Script,
    pub(crate) release: Script,
    pub(crate) renew: Script,
    pub(crate) abandon: Script,
    pub(crate) remove: Script,
}

/// The scripts, hashed once per process.
pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    claim: Script::new(CLAIM),
    peek: Script::new(PEEK),
    complete: Script::new(COMPLETE),
    release: Script::new(RELEASE),
    renew: Script::new(RENEW),
    abandon: Script::new(ABANDON),
    remove: Script::new(REMOVE),
});

/// Every script's source, by operation name (for tests).
#[cfg(test)]
pub(crate) const ALL: [(&str, &str); 7] = [
    ("claim", CLAIM),
    ("peek", PEEK),
    ("complete", COMPLETE),
    ("release", RELEASE),
    ("renew", RENEW),
    ("abandon", ABANDON),
    ("remove", REMOVE),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_touches_exactly_one_key() {
        for (name, source) in ALL {
            let mut rest = source;
            let mut uses = 0;
            while let Some(at) = rest.find("KEYS[") {
                let after = &rest[at + "KEYS[".len()..];
                assert!(
                    after.starts_with("1]"),
                    "{name}: every key access must be KEYS[1]: {}",
                    &rest[at..(at + 8).min(rest.len())]
                );
                uses += 1;
                rest = after;
            }
            assert_eq!(uses, 1, "{name}: KEYS[1] is read once, into `key`");
            // Every command names `key`: no key built from ARGV or a
            // constant (which Cluster would route elsewhere).
            for call in source.split("redis.call(").skip(1) {
                let command = call.split(')').next().unwrap_or_default();
                let first_arg = command.split(',').nth(1).map(str::trim);
                if command.starts_with("'TIME'") {
                    assert_eq!(first_arg, None, "{name}: TIME takes no key");
                } else {
                    assert_eq!(
                        first_arg,
                        Some("key"),
                        "{name}: every command's key is `key`: redis.call({command})"
                    );
                }
            }
        }
    }

    #[test]
    fn every_script_starts_with_a_shebang_and_its_flags() {
        let expected = [
            ("claim", "#!lua\n"),
            ("peek", "#!lua flags=no-writes\n"),
            ("complete", "#!lua flags=allow-oom\n"),
            ("release", "#!lua flags=allow-oom\n"),
            ("renew", "#!lua flags=allow-oom\n"),
            ("abandon", "#!lua flags=allow-oom\n"),
            ("remove", "#!lua flags=allow-oom\n"),
        ];
        for ((name, source), (expected_name, first_line)) in ALL.into_iter().zip(expected) {
            assert_eq!(name, expected_name);
            assert!(
                source.starts_with(first_line),
                "{name} must start with {first_line:?}: {:?}",
                source.lines().next()
            );
        }
    }

    #[test]
    fn peek_never_writes() {
        for write in ["HSET", "DEL", "PEXPIRE", "HDEL"] {
            assert!(!PEEK.contains(write), "peek must not {write}");
        }
    }
}
