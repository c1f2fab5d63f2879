//! The Lua scripts (in `scripts/`, each headed with its ARGV and reply) and
//! the keys every one of them is passed, in the order `prelude.lua` names
//! them. Each script is the prelude plus its body, run as one EVALSHA (EVAL
//! when the node does not have it: see `nodes`).
//!
//! Each comes in two texts. Redis 7 routes a script by its flags, read from
//! a `#!lua` first line: without one, a script counts as read-only to the
//! routing, so a demoted master (or a replica) would start running it and
//! fail at its first write instead of redirecting. The flagged text has the
//! shebang (no flags: a script that may write, refused up front by a
//! replica); Redis before 7 cannot parse a shebang and gets the plain text.

use std::sync::LazyLock;

use deadpool_redis::redis::Script;

use crate::semaphore::SemaphoreName;

/// The suffixes of a semaphore's keys, in `KEYS` order (see prelude.lua).
const KEY_SUFFIXES: [&str; 9] = [
    "meta", "expiry", "permits", "idem", "queue", "waiters", "wleases", "left", "ended",
];

/// Every key of semaphore `name` under `prefix`, in `KEYS` order. The `{name}`
/// hash tag puts them all in one cluster slot.
pub(super) fn keys(prefix: &str, name: &SemaphoreName) -> [String; 9] {
    let base = format!("{prefix}{{{}}}", name.as_str());
    KEY_SUFFIXES.map(|suffix| format!("{base}:{suffix}"))
}

const PRELUDE: &str = include_str!("scripts/prelude.lua");

/// One script's text and its SHA-1 (what EVALSHA names it by).
pub(super) struct Lua {
    pub(super) source: String,
    pub(super) hash: String,
}

impl Lua {
    fn new(source: String) -> Self {
        let hash = Script::new(&source).get_hash().to_owned();
        Self { source, hash }
    }
}

/// One script, with the name its metrics are labelled by.
pub(super) struct NamedScript {
    pub(super) name: &'static str,
    /// Whether it changes the semaphore (then `--redis-wait-replicas` waits
    /// for replicas after it); the reads only ever sweep expired leases,
    /// which any later call sweeps again.
    pub(super) writes: bool,
    flagged: Lua,
    plain: Lua,
}

impl NamedScript {
    /// The text for a Redis that reads `#!lua` flags (7.0 on), or not.
    pub(super) fn lua(&self, flags: bool) -> &Lua {
        if flags { &self.flagged } else { &self.plain }
    }
}

/// The prelude, then the body wrapped in a function, so that every script
/// replies `{swept, body's reply}`: `swept` is how many expired leases the
/// prelude's `expire()` removed during the call (see prelude.lua). `run`
/// counts them, in one place, whatever the body's own reply shape. The body
/// runs before `swept` is read (a table constructor would read it first),
/// and the meta hash is written back once after it, whichever `return` the
/// body took (`flush_meta`, see prelude.lua).
fn script(name: &'static str, writes: bool, body: &str) -> NamedScript {
    let plain = format!(
        "{PRELUDE}\nlocal function body()\n{body}\nend\nlocal reply = body()\nflush_meta()\nreturn {{ swept, reply }}\n"
    );
    NamedScript {
        name,
        writes,
        flagged: Lua::new(format!("#!lua\n{plain}")),
        plain: Lua::new(plain),
    }
}

pub(super) static ACQUIRE: LazyLock<NamedScript> =
    LazyLock::new(|| script("acquire", true, include_str!("scripts/acquire.lua")));
pub(super) static PERMIT: LazyLock<NamedScript> =
    LazyLock::new(|| script("permit", false, include_str!("scripts/permit.lua")));
pub(super) static REFRESH: LazyLock<NamedScript> =
    LazyLock::new(|| script("refresh", true, include_str!("scripts/refresh.lua")));
pub(super) static RELEASE: LazyLock<NamedScript> =
    LazyLock::new(|| script("release", true, include_str!("scripts/release.lua")));
pub(super) static SET_LIMIT: LazyLock<NamedScript> =
    LazyLock::new(|| script("set_limit", true, include_str!("scripts/set_limit.lua")));
pub(super) static STATUS: LazyLock<NamedScript> =
    LazyLock::new(|| script("status", false, include_str!("scripts/status.lua")));
pub(super) static DELETE: LazyLock<NamedScript> =
    LazyLock::new(|| script("delete", true, include_str!("scripts/delete.lua")));
pub(super) static LEAVE: LazyLock<NamedScript> =
    LazyLock::new(|| script("leave", true, include_str!("scripts/leave.lua")));
