//! Which backends this build has, and the endpoint URL the harness uses for each.

use std::sync::atomic::{AtomicU32, Ordering};

/// Transport names the harness knows: (name, scheme, cargo feature).
pub const KNOWN: [(&str, &str, &str); 5] = [
    ("tcp", "tcp", "tcp"),
    ("unix", "unix", "tcp"),
    ("zmq", "zmq+tcp", "zmq"),
    ("shm-ring", "shm-ring", "shm-ring"),
    ("shm-pool", "shm-pool", "shm-pool"),
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
        "shm-ring" => format!("shm-ring://{tag}?capacity={}MiB", 4 * mib + 4),
        "shm-pool" => format!("shm-pool://{tag}?slots=8&slot_size={}MiB", mib + 1),
        other => return Err(format!("unknown transport `{other}`")),
    })
}
