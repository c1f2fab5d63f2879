//! The Lua scripts (in `scripts/`, each headed with its ARGV and reply) and
//! the keys every one of them is passed, in the order `prelude.lua` names
//! them. Each script is the prelude plus its body, run as one EVALSHA.

use std::sync::LazyLock;

use deadpool_redis::redis::Script;

use crate::semaphore::SemaphoreName;

/// The suffixes of a semaphore's keys, in `KEYS` order (see prelude.lua).
const KEY_SUFFIXES: [&str; 8] = [
    "meta", "expiry", "permits", "idem", "queue", "waiters", "wleases", "left",
];

/// Every key of semaphore `name` under `prefix`, in `KEYS` order. The `{name}`
/// hash tag puts them all in one cluster slot.
pub(super) fn keys(prefix: &str, name: &SemaphoreName) -> [String; 8] {
    let base = format!("{prefix}{{{}}}", name.as_str());
    KEY_SUFFIXES.map(|suffix| format!("{base}:{suffix}"))
}

const PRELUDE: &str = include_str!("scripts/prelude.lua");

/// One script, with the name its metrics are labelled by.
pub(super) struct NamedScript {
    pub(super) name: &'static str,
    pub(super) script: Script,
}

/// The prelude, then the body wrapped in a function, so that every script
/// replies `{swept, body's reply}`: `swept` is how many expired leases the
/// prelude's `expire()` removed during the call (see prelude.lua). `run`
/// counts them, in one place, whatever the body's own reply shape. The body
/// runs before `swept` is read (a table constructor would read it first).
fn script(name: &'static str, body: &str) -> NamedScript {
    NamedScript {
        name,
        script: Script::new(&format!(
            "{PRELUDE}\nlocal function body()\n{body}\nend\nlocal reply = body()\nreturn {{ swept, reply }}\n"
        )),
    }
}

pub(super) static ACQUIRE: LazyLock<NamedScript> =
    LazyLock::new(|| script("acquire", include_str!("scripts/acquire.lua")));
pub(super) static PERMIT: LazyLock<NamedScript> =
    LazyLock::new(|| script("permit", include_str!("scripts/permit.lua")));
pub(super) static REFRESH: LazyLock<NamedScript> =
    LazyLock::new(|| script("refresh", include_str!("scripts/refresh.lua")));
pub(super) static RELEASE: LazyLock<NamedScript> =
    LazyLock::new(|| script("release", include_str!("scripts/release.lua")));
pub(super) static SET_LIMIT: LazyLock<NamedScript> =
    LazyLock::new(|| script("set_limit", include_str!("scripts/set_limit.lua")));
pub(super) static STATUS: LazyLock<NamedScript> =
    LazyLock::new(|| script("status", include_str!("scripts/status.lua")));
pub(super) static DELETE: LazyLock<NamedScript> =
    LazyLock::new(|| script("delete", include_str!("scripts/delete.lua")));
pub(super) static LEAVE: LazyLock<NamedScript> =
    LazyLock::new(|| script("leave", include_str!("scripts/leave.lua")));
