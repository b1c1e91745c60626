//! Which backends this build has, and the endpoint URL the harness uses for each.

use std::sync::atomic::{AtomicU32, Ordering};

/// Transport names the harness knows: (name, scheme, cargo feature).
pub const KNOWN: [(&str, &str, &str); 6] = [
    ("tcp", "tcp", "tcp"),
    ("unix", "unix", "tcp"),
    ("zmq", "zmq+tcp", "zmq"),
    ("shm-ring", "shm-ring", "shm-ring"),
    ("shm-pool", "shm-pool", "shm-pool"),
    ("zenoh", "zenoh", "zenoh"),
];

/// Names of the transports compiled into this build, baseline (tcp) first.
pub fn compiled() -> Vec<&'static str> {
    let schemes = framewire::schemes();
    KNOWN
        .iter()
        .filter(|(_, scheme, _)| schemes.contains(scheme))
        .map(|(name, _, _)| *name)
        .collect()
}

/// Checks a list of names against this build.
pub fn check(names: &[String]) -> Result<(), String> {
    let have = compiled();
    for n in names {
        match KNOWN.iter().find(|(name, _, _)| name == n) {
            None => {
                return Err(format!(
                    "unknown transport `{n}`; known: {}",
                    KNOWN.map(|k| k.0).join(", ")
                ));
            }
            Some((_, _, feature)) if !have.contains(&n.as_str()) => {
                return Err(format!(
                    "transport `{n}` is not compiled in; build with `--features {feature}` (compiled in: {})",
                    have.join(", ")
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// A fresh endpoint URL for `name`, sized for payloads of `size` bytes, with
/// `extra` (`key=value&...`, may be empty) appended to its query.
pub fn url_with(name: &str, size: u64, extra: &str) -> Result<String, String> {
    let base = url(name, size)?;
    let extra = extra.trim_start_matches(['?', '&']);
    Ok(match (extra.is_empty(), base.contains('?')) {
        (true, _) => base,
        (false, true) => format!("{base}&{extra}"),
        (false, false) => format!("{base}?{extra}"),
    })
}

/// How to let `name` carry larger payloads, for an error message.
pub fn raise_hint(name: &str) -> &'static str {
    match name {
        "tcp" | "unix" | "zenoh" => "raise it with `--options max_payload=SIZE`",
        "zmq" => {
            "raise it with `--options max_payload=SIZE` (with `shm=pool`, `slot_size=SIZE` too)"
        }
        "shm-pool" => {
            "the harness sizes `slot_size` to fit each size: do not set a smaller one in --options"
        }
        "shm-ring" => {
            "the harness sizes `capacity` to fit each size: do not set a smaller one in --options"
        }
        _ => "see the backend's README for its size options",
    }
}

/// Shared memory the harness's endpoint for `name` maps for payloads of
/// `size` bytes (all of it is written over a run), or 0 for socket backends;
/// in step with the sizing in [`url`].
pub fn shared_bytes(name: &str, size: u64) -> u64 {
    let mib = size.div_ceil(1 << 20).max(1);
    match name {
        "shm-ring" => (4 * mib + 4) << 20,
        "shm-pool" => 8 * ((mib + 1) << 20),
        _ => 0,
    }
}

/// Refuses a size whose run would need more memory than the machine has
/// available (`MemAvailable` in /proc/meminfo): the shared memory of the
/// endpoint plus the producer's and the consumer's copy of one frame.
pub fn check_memory(name: &str, size: u64) -> Result<(), String> {
    let Some(avail) = mem_available() else {
        return Ok(());
    };
    let shared = shared_bytes(name, size);
    let need = shared.saturating_add(size.saturating_mul(2));
    if need <= avail {
        return Ok(());
    }
    let what = if shared > 0 {
        format!(
            "{} of shared memory for its endpoint plus two frames",
            crate::report::tick_size(shared)
        )
    } else {
        "two copies of a frame".to_owned()
    };
    Err(format!(
        "--sizes {}: {name} would need about {} ({what}), more than the {} this machine has available; lower --sizes",
        framewire::fmt_size(size),
        crate::report::tick_size(need),
        crate::report::tick_size(avail)
    ))
}

/// `MemAvailable` from /proc/meminfo, in bytes.
fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// A fresh endpoint URL for `name`, sized for payloads of `size` bytes.
pub fn url(name: &str, size: u64) -> Result<String, String> {
    static N: AtomicU32 = AtomicU32::new(0);
    let tag = format!(
        "fwb-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mib = size.div_ceil(1 << 20).max(1);
    Ok(match name {
        "tcp" => "tcp://127.0.0.1:0".to_owned(),
        "unix" => format!("unix://{}/{tag}.sock", std::env::temp_dir().display()),
        "zmq" => "zmq+tcp://127.0.0.1:0".to_owned(),
        // Room for several records of this size in flight.
        // Keep in step with `shared_bytes`.
        "shm-ring" => format!("shm-ring://{tag}?capacity={}MiB", 4 * mib + 4),
        "shm-pool" => format!("shm-pool://{tag}?slots=8&slot_size={}MiB", mib + 1),
        // Peer to peer on loopback: the publisher listens on a free port and
        // hands subscribers `connect=` (its endpoint()).
        "zenoh" => format!(
            "zenoh://fwb/{tag}?listen=tcp/127.0.0.1:0&max_payload={}MiB",
            mib.max(256)
        ),
        other => return Err(format!("unknown transport `{other}`")),
    })
}
