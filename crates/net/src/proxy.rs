//! PROXY protocol v1 and v2 (haproxy's proxy-protocol.txt) for listeners behind a load balancer,
//! so that limits, bans and logs see the real client address.
//!
//! Hand-written rather than taken from a crate: the header must be read from the socket without
//! consuming one byte past it (what follows belongs to TLS or to the mail protocol), under a
//! deadline, and with hard size caps; the parsers here are small, sans-I/O and fuzzable, and the
//! reading loop around them asks the socket for exactly the bytes the format announces.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const V2_SIG: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// v1 lines are at most 107 bytes including CRLF.
const V1_MAX: usize = 107;
/// Cap on the v2 address block we accept (TLVs included).
const V2_MAX: usize = 512;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header")]
    Malformed,
    #[error("timed out reading the PROXY protocol header")]
    Timeout,
    #[error("connection closed in the PROXY protocol header")]
    Closed,
}

/// The client address a header announced; None for `UNKNOWN`/`LOCAL` (health checks), where the
/// connection's own address stands.
pub type Announced = Option<SocketAddr>;

/// Parses a complete v1 line (with its CRLF).
pub fn parse_v1(line: &[u8]) -> Result<Announced, ProxyError> {
    let line = line.strip_suffix(b"\r\n").ok_or(ProxyError::Malformed)?;
    let text = std::str::from_utf8(line).map_err(|_| ProxyError::Malformed)?;
    let mut parts = text.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(ProxyError::Missing);
    }
    match parts.next() {
        Some("UNKNOWN") => Ok(None),
        Some(fam @ ("TCP4" | "TCP6")) => {
            let (Some(src), Some(_dst), Some(sport), Some(_dport), None) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) else {
                return Err(ProxyError::Malformed);
            };
            let ip: IpAddr = src.parse().map_err(|_| ProxyError::Malformed)?;
            if ip.is_ipv4() != (fam == "TCP4") {
                return Err(ProxyError::Malformed);
            }
            if sport.is_empty() || sport.len() > 5 || !sport.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ProxyError::Malformed);
            }
            let port: u16 = sport.parse().map_err(|_| ProxyError::Malformed)?;
            Ok(Some(SocketAddr::new(ip, port)))
        }
        _ => Err(ProxyError::Malformed),
    }
}

/// Parses the v2 header: `head` is the fixed 16 bytes, `body` the announced address block.
pub fn parse_v2(head: &[u8; 16], body: &[u8]) -> Result<Announced, ProxyError> {
    if head[..12] != V2_SIG {
        return Err(ProxyError::Missing);
    }
    let ver_cmd = head[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Malformed);
    }
    let fam = head[13];
    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
    if body.len() != len {
        return Err(ProxyError::Malformed);
    }
    match ver_cmd & 0x0F {
        0x0 => return Ok(None), // LOCAL: health check from the proxy itself
        0x1 => {}
        _ => return Err(ProxyError::Malformed),
    }
    match fam {
        // TCP over IPv4: src(4) dst(4) sport(2) dport(2)
        0x11 if len >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        // TCP over IPv6: src(16) dst(16) sport(2) dport(2)
        0x21 if len >= 36 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Ok(Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port)))
        }
        0x00 => Ok(None), // UNSPEC
        _ => Err(ProxyError::Malformed),
    }
}

/// Reads a v1 or v2 header from a fresh connection, taking exactly its bytes.
pub async fn read_header(tcp: &mut TcpStream, timeout: Duration) -> Result<Announced, ProxyError> {
    tokio::time::timeout(timeout, read_header_inner(tcp))
        .await
        .map_err(|_| ProxyError::Timeout)?
}

async fn read_header_inner(tcp: &mut TcpStream) -> Result<Announced, ProxyError> {
    let mut first = [0u8; 1];
    read_exact(tcp, &mut first).await?;
    match first[0] {
        b'P' => {
            let mut line = vec![b'P'];
            let mut b = [0u8; 1];
            while !line.ends_with(b"\r\n") {
                if line.len() >= V1_MAX {
                    return Err(ProxyError::Malformed);
                }
                read_exact(tcp, &mut b).await?;
                line.push(b[0]);
            }
            parse_v1(&line)
        }
        0x0D => {
            let mut head = [0u8; 16];
            head[0] = 0x0D;
            read_exact(tcp, &mut head[1..]).await?;
            if head[..12] != V2_SIG {
                return Err(ProxyError::Missing);
            }
            let len = u16::from_be_bytes([head[14], head[15]]) as usize;
            if len > V2_MAX {
                return Err(ProxyError::Malformed);
            }
            let mut body = vec![0u8; len];
            read_exact(tcp, &mut body).await?;
            parse_v2(&head, &body)
        }
        _ => Err(ProxyError::Missing),
    }
}

async fn read_exact(tcp: &mut TcpStream, buf: &mut [u8]) -> Result<(), ProxyError> {
    tcp.read_exact(buf)
        .await
        .map(|_| ())
        .map_err(|_| ProxyError::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 25\r\n").unwrap(),
            Some("192.0.2.7:51234".parse().unwrap())
        );
        assert_eq!(
            parse_v1(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 993\r\n").unwrap(),
            Some("[2001:db8::1]:4000".parse().unwrap())
        );
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n").unwrap(), None);
        for bad in [
            &b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n"[..],
            b"PROXY TCP4 192.0.2.7 10.0.0.1 99999 25\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 -1 25\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2 3\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2\n",
            b"PROXY UDP4 192.0.2.7 10.0.0.1 1 2\r\n",
        ] {
            assert_eq!(
                parse_v1(bad),
                Err(ProxyError::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse_v1(b"EHLO x\r\n"), Err(ProxyError::Missing));
    }

    #[test]
    fn v2() {
        let mut head = [0u8; 16];
        head[..12].copy_from_slice(&V2_SIG);
        head[12] = 0x21;
        head[13] = 0x11;
        head[14..16].copy_from_slice(&12u16.to_be_bytes());
        let body = [192, 0, 2, 9, 10, 0, 0, 1, 0x1F, 0x90, 0, 25];
        assert_eq!(
            parse_v2(&head, &body).unwrap(),
            Some("192.0.2.9:8080".parse().unwrap())
        );
        // LOCAL command
        head[12] = 0x20;
        assert_eq!(parse_v2(&head, &body).unwrap(), None);
        // wrong version, wrong length, unknown family
        head[12] = 0x11;
        assert!(parse_v2(&head, &body).is_err());
        head[12] = 0x21;
        assert!(parse_v2(&head, &body[..5]).is_err());
        head[13] = 0x31;
        assert!(parse_v2(&head, &body).is_err());
    }
}
