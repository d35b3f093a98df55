//! What a ban may cover, and for how long, by who asks: no role can lock everyone out.
//!
//! Bans are enforced at accept, before TLS, for every listener: a ban on `0.0.0.0/0` would drop
//! every mail user and every administrator until someone on the host ran `postern ban clear`.
//! So, for the CLI and the API alike:
//! * a network wider than /16 (IPv4) or /48 (IPv6) needs a superadmin (or the host's shell) and
//!   an explicit `force`;
//! * a ban never covers the caller's own address, an allowlisted network (`defence.allowlist`)
//!   or the admin API's allowed networks (`admin.allow`), whatever the role;
//! * its length is capped per role: helpdesk 1 day, domain-admin 7 days, superadmin 1 year,
//!   the host's shell 10 years.

use std::net::IpAddr;

use postern_auth::guard::Cidr;

use crate::roles::Role;

/// Who asks: an API caller's role, or the host's shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asker {
    Host,
    Api(Role),
}

pub const WIDEST_V4: u8 = 16;
pub const WIDEST_V6: u8 = 48;

/// The longest ban this asker may set, in seconds.
pub fn max_secs(asker: Asker) -> u64 {
    match asker {
        Asker::Host => 10 * 365 * 86400,
        Asker::Api(Role::Superadmin) => 365 * 86400,
        Asker::Api(Role::DomainAdmin) => 7 * 86400,
        Asker::Api(Role::Helpdesk) | Asker::Api(Role::Auditor) => 86400,
    }
}

fn overlaps(a: &Cidr, b: &Cidr) -> bool {
    if a.addr.is_ipv4() != b.addr.is_ipv4() {
        return false;
    }
    if a.prefix <= b.prefix {
        a.contains(b.addr)
    } else {
        b.contains(a.addr)
    }
}

/// Ok, or why this ban is refused (a sentence for the asker).
pub fn check(
    target: &Cidr,
    secs: u64,
    asker: Asker,
    force: bool,
    caller: Option<IpAddr>,
    protected: &[Cidr],
) -> Result<(), String> {
    let widest = if target.addr.is_ipv4() {
        WIDEST_V4
    } else {
        WIDEST_V6
    };
    if target.prefix < widest {
        let may = matches!(asker, Asker::Host | Asker::Api(Role::Superadmin));
        if !may {
            return Err(format!(
                "{target} is wider than /{widest}: only a superadmin may ban so wide a network, and only with force"
            ));
        }
        if !force {
            return Err(format!(
                "{target} is wider than /{widest} and would shut out many users: repeat with force if that is what you want"
            ));
        }
    }
    if let Some(ip) = caller {
        if target.contains(ip) {
            return Err(format!(
                "{target} covers your own address {ip}: you would lock yourself out"
            ));
        }
    }
    if let Some(p) = protected.iter().find(|p| overlaps(target, p)) {
        return Err(format!(
            "{target} covers the allowlisted network {p} (defence.allowlist / admin.allow), which is never banned"
        ));
    }
    let max = max_secs(asker);
    if secs == 0 || secs > max {
        return Err(format!(
            "the duration must be between 1 and {max} seconds for {}",
            match asker {
                Asker::Host => "the host's shell".to_owned(),
                Asker::Api(r) => format!("the {} role", r.as_str()),
            }
        ));
    }
    Ok(())
}

/// The networks no ban may touch, from the configuration.
pub fn protected(cfg: &postern_config::Config) -> Vec<Cidr> {
    cfg.defence
        .allowlist
        .iter()
        .chain(&cfg.admin.allow)
        .filter_map(|a| Cidr::parse(a).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    #[test]
    fn nobody_locks_everyone_out() {
        let me: IpAddr = "192.0.2.10".parse().unwrap();
        let prot = [c("198.51.100.0/24")];
        let helpdesk = Asker::Api(Role::Helpdesk);
        let sa = Asker::Api(Role::Superadmin);
        for wide in ["0.0.0.0/0", "::/0", "10.0.0.0/8"] {
            assert!(check(&c(wide), 3600, helpdesk, true, Some(me), &[]).is_err());
            assert!(check(&c(wide), 3600, sa, false, None, &[]).is_err());
        }
        assert!(check(&c("10.0.0.0/8"), 3600, sa, true, None, &[]).is_ok());
        assert!(
            check(&c("0.0.0.0/0"), 3600, sa, true, Some(me), &[]).is_err(),
            "covers the caller"
        );
        assert!(check(&c("192.0.2.0/24"), 3600, helpdesk, false, Some(me), &[]).is_err());
        assert!(check(&c("198.51.0.0/16"), 3600, sa, false, None, &prot).is_err());
        assert!(check(&c("198.51.100.7"), 3600, sa, false, None, &prot).is_err());
        assert!(check(&c("203.0.113.7"), 3600, helpdesk, false, Some(me), &prot).is_ok());
        assert!(check(
            &c("203.0.113.7"),
            10 * 365 * 86400,
            helpdesk,
            false,
            None,
            &[]
        )
        .is_err());
        assert!(check(&c("2001:db8::/48"), 3600, helpdesk, false, None, &[]).is_ok());
        assert!(check(&c("2001:db8::/32"), 3600, helpdesk, false, None, &[]).is_err());
        assert!(check(&c("10.0.0.0/8"), 3600, Asker::Host, true, None, &[]).is_ok());
    }
}
