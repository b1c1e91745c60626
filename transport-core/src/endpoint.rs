//! Endpoint URLs and the options they carry.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::{Error, Result};

/// A parsed endpoint URL: `scheme://address?key=value&...`.
///
/// ```
/// use transport_core::Endpoint;
/// let e = Endpoint::parse("shm-pool://cam0?slots=8&slot_size=32MiB").unwrap();
/// assert_eq!(e.scheme(), "shm-pool");
/// assert_eq!(e.address(), "cam0");
/// assert_eq!(e.size("slot_size").unwrap(), Some(32 << 20));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    url: String,
    scheme: String,
    address: String,
    params: Vec<(String, String)>,
}

impl Endpoint {
    /// Parses `scheme://address?key=value&...`. Keys must be unique.
    pub fn parse(url: &str) -> Result<Endpoint> {
        let bad = |reason: &str| Error::InvalidEndpoint {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            bad("expected `scheme://address[?key=value&...]`, e.g. tcp://127.0.0.1:7000")
        })?;
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '+' || c == '-')
        {
            return Err(bad(
                "the scheme must be lowercase letters, digits, `+` or `-`",
            ));
        }
        let (address, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        if address.is_empty() {
            return Err(bad("the address after `://` is empty"));
        }
        let mut params: Vec<(String, String)> = Vec::new();
        for pair in query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad(&format!("query parameter `{pair}` has no `=value`")))?;
            if k.is_empty() {
                return Err(bad("a query parameter has an empty name"));
            }
            if params.iter().any(|(pk, _)| pk == k) {
                return Err(bad(&format!("query parameter `{k}` is given twice")));
            }
            params.push((k.to_owned(), v.to_owned()));
        }
        Ok(Endpoint {
            url: url.to_owned(),
            scheme: scheme.to_owned(),
            address: address.to_owned(),
            params,
        })
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The scheme, e.g. `tcp` or `shm-pool`.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// What follows `://`, up to `?`: `host:port`, a path, or a name.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// All query parameters, in order.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// One query parameter's raw value.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// This endpoint with `key` set to `value` (replacing any earlier value).
    pub fn with_param(mut self, key: &str, value: impl fmt::Display) -> Endpoint {
        let value = value.to_string();
        match self.params.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.params.push((key.to_owned(), value)),
        }
        self.url = self.render();
        self
    }

    /// This endpoint without the parameters named in `keys`.
    pub fn without_params(mut self, keys: &[&str]) -> Endpoint {
        let before = self.params.len();
        self.params.retain(|(k, _)| !keys.contains(&k.as_str()));
        if self.params.len() != before {
            self.url = self.render();
        }
        self
    }

    fn render(&self) -> String {
        let mut s = format!("{}://{}", self.scheme, self.address);
        for (i, (k, v)) in self.params.iter().enumerate() {
            s.push(if i == 0 { '?' } else { '&' });
            s.push_str(k);
            s.push('=');
            s.push_str(v);
        }
        s
    }

    /// Fails on any parameter outside `accepted`, listing what is accepted.
    pub fn check_params(&self, accepted: &[&str]) -> Result<()> {
        for (k, _) in &self.params {
            if !accepted.contains(&k.as_str()) {
                return Err(Error::InvalidOption {
                    option: k.clone(),
                    reason: format!(
                        "unknown for `{}://` endpoints; accepted: {}",
                        self.scheme,
                        accepted.join(", ")
                    ),
                });
            }
        }
        Ok(())
    }

    /// A parameter parsed with [`FromStr`].
    pub fn parse_param<T>(&self, key: &str) -> Result<Option<T>>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        self.param(key)
            .map(|v| {
                v.parse::<T>().map_err(|e| Error::InvalidOption {
                    option: key.to_owned(),
                    reason: format!("`{v}`: {e}"),
                })
            })
            .transpose()
    }

    /// A size parameter such as `32MiB` (see [`parse_size`]).
    pub fn size(&self, key: &str) -> Result<Option<u64>> {
        self.param(key)
            .map(|v| {
                parse_size(v).map_err(|reason| Error::InvalidOption {
                    option: key.to_owned(),
                    reason,
                })
            })
            .transpose()
    }

    /// A duration parameter such as `250ms` (see [`parse_duration`]).
    pub fn duration(&self, key: &str) -> Result<Option<Duration>> {
        self.param(key)
            .map(|v| {
                parse_duration(v).map_err(|reason| Error::InvalidOption {
                    option: key.to_owned(),
                    reason,
                })
            })
            .transpose()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl FromStr for Endpoint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Endpoint::parse(s)
    }
}

/// Parses a byte size: a number with an optional unit `B`, `KiB`, `MiB`, `GiB`,
/// `TiB` (powers of 1024; `K`, `M`, `G`, `KB`, `MB`, `GB` are read the same way).
///
/// ```
/// assert_eq!(transport_core::endpoint::parse_size("24MiB"), Ok(24 << 20));
/// assert_eq!(transport_core::endpoint::parse_size("1.5KiB"), Ok(1536));
/// ```
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{s}`; use B, KiB, MiB, GiB or TiB"
            ));
        }
    };
    if num.is_empty() {
        return Err(format!(
            "`{s}` is not a size; write e.g. 4096, 64KiB or 24MiB"
        ));
    }
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(scale)
            .ok_or_else(|| format!("size `{s}` overflows 64 bits"));
    }
    let f: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size; write e.g. 4096, 64KiB or 24MiB"))?;
    let v = f * scale as f64;
    if !v.is_finite() || v >= u64::MAX as f64 {
        return Err(format!("size `{s}` overflows 64 bits"));
    }
    Ok(v.round() as u64)
}

/// Parses a duration: a number with a unit `ns`, `us`, `ms`, `s` or `m`.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; write e.g. 250ms or 5s"))?;
    let secs = match unit {
        "ns" => n / 1e9,
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" | "" => n,
        "m" => n * 60.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}`; use ns, us, ms, s or m"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_schemes_addresses_and_params() {
        let e = Endpoint::parse("unix:///tmp/a.sock?policy=fail").unwrap();
        assert_eq!((e.scheme(), e.address()), ("unix", "/tmp/a.sock"));
        assert_eq!(e.param("policy"), Some("fail"));
        assert!(Endpoint::parse("tcp:/x").is_err());
        assert!(Endpoint::parse("TCP://x").is_err());
        assert!(Endpoint::parse("tcp://").is_err());
        assert!(Endpoint::parse("tcp://a?x=1&x=2").is_err());
        assert!(Endpoint::parse("tcp://a?novalue").is_err());
        let e = e.with_param("queue", 4).with_param("policy", "block");
        assert_eq!(e.url(), "unix:///tmp/a.sock?policy=block&queue=4");
    }

    #[test]
    fn unknown_params_list_what_is_accepted() {
        let e = Endpoint::parse("tcp://h:1?slots=3").unwrap();
        let msg = e
            .check_params(&["policy", "queue"])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("slots") && msg.contains("policy, queue"),
            "{msg}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("32 MiB"), Ok(32 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5MiB"), Ok(3 << 19));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
