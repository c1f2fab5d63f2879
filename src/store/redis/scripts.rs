//! The Lua scripts (in `scripts/`, each headed with its ARGV and reply) and
//! the keys every one of them is passed, in the order `prelude.lua` names
//! them. Each script is the prelude plus its body, run as one atomic call:
//! on Redis 7 as a function of one library (`LIBRARY`, FCALL), before 7 as
//! EVALSHA; a node that lacks the library or the script gets it in the same
//! call's retry (see `nodes`).
//!
//! The EVALSHA text comes in two forms. Redis 7 routes a script by its
//! flags, read from a `#!lua` first line: without one, a script counts as
//! read-only to the routing, so a demoted master (or a replica) would start
//! running it and fail at its first write instead of redirecting. The
//! flagged text has the shebang (no flags: a script that may write, refused
//! up front by a replica); Redis before 7 cannot parse a shebang and gets the
//! plain text. The library's functions are registered without flags, which
//! means the same.

use std::sync::{LazyLock, OnceLock};

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

/// Every script: its name (metrics label and function name), whether it
/// changes the semaphore (then `--redis-wait-replicas` waits for replicas
/// after it; the reads only ever sweep expired leases, which any later call
/// sweeps again), and its body.
const BODIES: [(&str, bool, &str); 9] = [
    ("acquire", true, include_str!("scripts/acquire.lua")),
    ("permit", false, include_str!("scripts/permit.lua")),
    ("refresh", true, include_str!("scripts/refresh.lua")),
    ("release", true, include_str!("scripts/release.lua")),
    ("set_limit", true, include_str!("scripts/set_limit.lua")),
    ("status", false, include_str!("scripts/status.lua")),
    ("delete", true, include_str!("scripts/delete.lua")),
    ("leave", true, include_str!("scripts/leave.lua")),
    ("sweep", false, include_str!("scripts/sweep.lua")),
];

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

/// Every script as one Redis Functions library (Redis 7 on): loaded once per
/// node, replicated to its replicas and kept in its snapshots, and each
/// call then runs the prelude's definitions no more (they cost about as much
/// Redis time as the commands of a call when run per EVALSHA).
///
/// Its name carries a digest of its text, so instances of two versions of
/// permitd each find their own library on the same Redis, and a node never
/// runs a function of another version's text.
pub(super) struct Library {
    pub(super) name: String,
    pub(super) source: String,
}

pub(super) static LIBRARY: LazyLock<Library> = LazyLock::new(|| {
    let mut functions = String::new();
    for (name, _, body) in BODIES {
        // `__NAME__` stands for the library's name, known only once the
        // text it is part of is hashed.
        functions.push_str(&format!(
            "do\nlocal function body(KEYS, ARGV)\n{body}\nend\n\
             redis.register_function('__NAME___{name}', \
             function(keys, argv) return run(body, keys, argv) end)\nend\n"
        ));
    }
    let text = format!("{PRELUDE}\n{functions}");
    let digest = Script::new(&text).get_hash().to_owned();
    let name = format!("permitd_{}", &digest[..16]);
    let source = format!("#!lua name={name}\n{}", text.replace("__NAME__", &name));
    Library { name, source }
});

/// One script, with the name its metrics are labelled by.
pub(super) struct NamedScript {
    pub(super) name: &'static str,
    /// Whether it changes the semaphore (see `BODIES`).
    pub(super) writes: bool,
    /// Its function in `LIBRARY`.
    pub(super) function: String,
    body: &'static str,
    /// Its EVALSHA texts, plain and flagged: built on first use, which on
    /// Redis 7 is only when a node refuses Functions (they hold a copy of
    /// the prelude each, half a MiB for all the scripts).
    texts: OnceLock<[Lua; 2]>,
}

impl NamedScript {
    /// The EVALSHA text for a Redis that reads `#!lua` flags (7.0 on), or
    /// not: the prelude, then the body as a function that `run` (see
    /// prelude.lua) calls between the call's start and the meta hash's
    /// write-back.
    pub(super) fn lua(&self, flags: bool) -> &Lua {
        let [plain, flagged] = self.texts.get_or_init(|| {
            let body = self.body;
            let plain = format!(
                "{PRELUDE}\nlocal function body(KEYS, ARGV)\n{body}\nend\nreturn run(body, KEYS, ARGV)\n"
            );
            let flagged = Lua::new(format!("#!lua\n{plain}"));
            [Lua::new(plain), flagged]
        });
        if flags { flagged } else { plain }
    }
}

/// The script of that name in `BODIES`.
fn script(name: &'static str) -> NamedScript {
    let (_, writes, body) = BODIES
        .into_iter()
        .find(|(listed, _, _)| *listed == name)
        .expect("every script is listed in BODIES");
    NamedScript {
        name,
        writes,
        function: format!("{}_{name}", LIBRARY.name),
        body,
        texts: OnceLock::new(),
    }
}

pub(super) static ACQUIRE: LazyLock<NamedScript> = LazyLock::new(|| script("acquire"));
pub(super) static PERMIT: LazyLock<NamedScript> = LazyLock::new(|| script("permit"));
pub(super) static REFRESH: LazyLock<NamedScript> = LazyLock::new(|| script("refresh"));
pub(super) static RELEASE: LazyLock<NamedScript> = LazyLock::new(|| script("release"));
pub(super) static SET_LIMIT: LazyLock<NamedScript> = LazyLock::new(|| script("set_limit"));
pub(super) static STATUS: LazyLock<NamedScript> = LazyLock::new(|| script("status"));
pub(super) static DELETE: LazyLock<NamedScript> = LazyLock::new(|| script("delete"));
pub(super) static LEAVE: LazyLock<NamedScript> = LazyLock::new(|| script("leave"));
pub(super) static SWEEP: LazyLock<NamedScript> = LazyLock::new(|| script("sweep"));
