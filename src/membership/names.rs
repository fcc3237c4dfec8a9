//! Validated names from the contract: a value of these types has passed its rule, so nothing
//! invalid can reach the state machine or the log.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use compact_str::CompactString;

use serde::{Deserialize, Serialize};

use super::ValidationError;

/// Defines a string newtype over `$inner` that is only built through `parse`, and
/// (de)serializes as a string.
macro_rules! validated_string {
    ($(#[$doc:meta])* $name:ident($inner:ty), $what:literal, $rule:literal, $check:path) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name($inner);

        impl $name {
            /// Checks `s` against the contract's rule for this name.
            pub fn parse(s: &str) -> Result<Self, ValidationError> {
                if $check(s) {
                    Ok(Self(<$inner>::from(s)))
                } else {
                    Err(ValidationError::new($what, format!("{:?} is not a valid {}: {}", s, $what, $rule)))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                String::from(&*v.0)
            }
        }

        // Written as the plain string it is, without an owned copy on the way.
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

// Memory: a state of a million members holds these names millions of times. A group name is
// shared (`Arc<str>`: the state hands out its own copy, so every record of a group points at one
// string); the others are `CompactString`s, kept inline up to 24 bytes (most member ids,
// instances and `IPv4:port` addresses), so they cost no allocation of their own.
validated_string!(
    /// A group name: `^[a-z0-9]([a-z0-9._-]{0,62})$`.
    GroupName(Arc<str>), "group name",
    "1 to 63 characters of a-z, 0-9, '.', '_' and '-', starting with a-z or 0-9", is_group_name
);
validated_string!(
    /// A member id: `^[A-Za-z0-9]([A-Za-z0-9._:-]{0,127})$`.
    MemberId(CompactString), "member id",
    "1 to 128 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-', starting with a letter or digit", is_member_id
);
validated_string!(
    /// A client-chosen start-up token: 1 to 64 characters of `[A-Za-z0-9._:-]`.
    Instance(CompactString), "instance", "1 to 64 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-'", is_instance
);
validated_string!(
    /// `host:port` where a member answers probes: IPv4, `[IPv6]` or a DNS name; port 1-65535.
    Address(CompactString), "address",
    "host:port, with an IPv4 address, an [IPv6] address or a DNS name, and a port from 1 to 65535", is_address
);

fn is_group_name(s: &str) -> bool {
    let lead = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let rest = |c: u8| lead(c) || matches!(c, b'.' | b'_' | b'-');
    matches_rule(s, 63, lead, rest)
}

fn is_member_id(s: &str) -> bool {
    let rest = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-');
    matches_rule(s, 128, |c: u8| c.is_ascii_alphanumeric(), rest)
}

fn is_instance(s: &str) -> bool {
    let any = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-');
    matches_rule(s, 64, any, any)
}

/// A non-empty string of at most `max` bytes whose first byte passes `lead` and the rest `rest`.
fn matches_rule(s: &str, max: usize, lead: impl Fn(u8) -> bool, rest: impl Fn(u8) -> bool) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && b.len() <= max && lead(b[0]) && b[1..].iter().all(|&c| rest(c))
}

fn is_address(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|c| c.is_ascii_digit())
        && matches!(port.parse::<u32>(), Ok(1..=65535));
    port_ok && is_host(host)
}

fn is_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().is_ok();
    }
    // Anything made of digits and dots must be a real IPv4 address, not a DNS name.
    if host.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        return host.parse::<Ipv4Addr>().is_ok();
    }
    is_dns_name(host)
}

fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names() {
        for ok in ["a", "0", "orders", "a.b_c-d", &"a".repeat(63)] {
            assert!(GroupName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "-a", ".a", "_a", "a/b", "a b", "Orders", "é", &"a".repeat(64)] {
            assert!(GroupName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn member_ids() {
        for ok in ["w", "Worker-7", "pod:1.2_x", &"a".repeat(128)] {
            assert!(MemberId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", ":a", "-a", "a/b", "a b", "a%20", &"a".repeat(129)] {
            assert!(MemberId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn instances() {
        for ok in ["7f3c9a0e", "-", ":.", &"x".repeat(64)] {
            assert!(Instance::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", &"x".repeat(65)] {
            assert!(Instance::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        for ok in [
            "10.1.2.3:9021",
            "127.0.0.1:1",
            "[::1]:65535",
            "[2001:db8::7]:80",
            "pod-0.gm.default.svc.cluster.local:8080",
            "localhost:80",
            "host.:80",
        ] {
            assert!(Address::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "10.1.2.3",
            "10.1.2.3:",
            "10.1.2.3:0",
            "10.1.2.3:65536",
            "10.1.2.3:+80",
            "10.1.2.3:080000",
            "999.1.2.3:80",
            "1.2.3:80",
            "::1:80",
            "[::1]",
            "[zz::1]:80",
            ":80",
            "-host:80",
            "host-:80",
            "ho st:80",
            "a..b:80",
            "http://a:80",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<GroupName>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<GroupName>("\"NOT ok\"").is_err());
        assert_eq!(serde_json::to_string(&MemberId::parse("m1").unwrap()).unwrap(), "\"m1\"");
    }
}
