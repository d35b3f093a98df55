//! The one DNS resolver of a Postern process: MX look-ups for outbound delivery and the SPF, DKIM,
//! DMARC, ARC, PTR and DNSBL look-ups of inbound checks all go through the [`Dns`] built here from
//! `[dns]`, so they share one cache (hickory's, each answer kept for its TTL) and one set of
//! timeouts. A test points it at a DNS server on loopback with `[dns] server`.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use mail_auth::MessageAuthenticator;

pub use hickory_resolver;
pub use hickory_resolver::TokioResolver;
pub use mail_auth;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("DNS resolver setup: {0}")]
    Setup(String),
}

/// The shared resolver; cheap to clone (the cache is shared between clones).
#[derive(Clone)]
pub struct Dns {
    auth: MessageAuthenticator,
}

/// What one DNS block list said about a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    NotListed,
    /// Listed, with the answer (127.0.0.x) the list gave.
    Listed(Ipv4Addr),
    /// The look-up failed; a block list that cannot answer never blocks mail.
    Unknown,
}

impl Dns {
    /// The system's resolvers (`/etc/resolv.conf`), or the one server of `[dns] server`.
    pub fn new(cfg: &postern_config::DnsConfig) -> Result<Dns, DnsError> {
        let mut builder = match cfg.server {
            Some(addr) => hickory_resolver::Resolver::builder_with_config(
                one_server(addr),
                TokioRuntimeProvider::default(),
            ),
            None => hickory_resolver::Resolver::builder_tokio()
                .map_err(|e| DnsError::Setup(e.to_string()))?,
        };
        let opts = builder.options_mut();
        opts.timeout = Duration::from_millis(cfg.timeout_ms);
        opts.attempts = cfg.attempts;
        opts.cache_size = cfg.cache_size;
        // Mail decisions rest on public DNS only: iprev, PTR checks and MX routes must not be
        // answered by /etc/hosts (which maps loopback to `localhost` and, often, the host's own
        // public address to its name, a false forward-confirmed PTR). Postfix does the same.
        opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        let resolver = builder
            .build()
            .map_err(|e| DnsError::Setup(e.to_string()))?;
        Ok(Dns {
            auth: MessageAuthenticator(resolver),
        })
    }

    /// The resolver itself (MX and address look-ups of outbound delivery).
    pub fn resolver(&self) -> &TokioResolver {
        &self.auth.0
    }

    /// The same resolver as `mail-auth` uses it (SPF, DKIM, DMARC, ARC, iprev).
    pub fn authenticator(&self) -> &MessageAuthenticator {
        &self.auth
    }

    /// Looks `ip` up in the block list `zone` (RFC 5782 2.1: the reversed address under the
    /// zone; an A record in 127.0.0.0/8 means listed).
    pub async fn dnsbl(&self, zone: &str, ip: IpAddr) -> Listing {
        let name = format!("{}.{}.", reversed(ip), zone.trim_end_matches('.'));
        match self.resolver().ipv4_lookup(name.as_str()).await {
            Ok(l) => l
                .answers()
                .iter()
                .find_map(|r| match &r.data {
                    hickory_resolver::proto::rr::RData::A(a) if a.0.octets()[0] == 127 => {
                        Some(Listing::Listed(a.0))
                    }
                    _ => None,
                })
                .unwrap_or(Listing::NotListed),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Listing::NotListed,
            Err(e) => {
                tracing::warn!(zone, error = %e, "DNS block list look-up failed; not blocking");
                Listing::Unknown
            }
        }
    }
}

fn one_server(addr: SocketAddr) -> ResolverConfig {
    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
    for c in &mut ns.connections {
        c.port = addr.port();
    }
    ResolverConfig::from_parts(None, vec![], vec![ns])
}

/// The RFC 5782 2.1 / 2.4 query label of an address: IPv4 octets reversed, IPv6 nibbles reversed.
pub fn reversed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut out = String::with_capacity(64);
            for b in v6.octets().iter().rev() {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push(char::from_digit((b & 0xf) as u32, 16).unwrap_or('0'));
                out.push('.');
                out.push(char::from_digit((b >> 4) as u32, 16).unwrap_or('0'));
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reversed_names() {
        assert_eq!(reversed("192.0.2.1".parse().unwrap()), "1.2.0.192");
        let v6 = reversed("2001:db8::1".parse().unwrap());
        assert!(v6.starts_with("1.0.0.0.0.0.0.0"));
        assert!(v6.ends_with("8.b.d.0.1.0.0.2"));
        assert_eq!(v6.split('.').count(), 32);
    }
}
