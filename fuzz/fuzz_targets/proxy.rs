//! PROXY protocol v1 and v2 headers (hand-written parser in postern-net, see its module comment).
//! Whatever it returns for v1 must be a well-formed client address; v2 must never read past the
//! announced block.
#![no_main]
#![forbid(unsafe_code)]
use libfuzzer_sys::fuzz_target;
use postern_net::proxy::{parse_v1, parse_v2};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(addr)) = parse_v1(data) {
        // only a whole TCP line is accepted, and the address is the one written in it
        let text = std::str::from_utf8(data).expect("accepted v1 lines are UTF-8");
        assert!(text.starts_with("PROXY TCP") && text.ends_with("\r\n"));
        let src: std::net::IpAddr = text.split(' ').nth(2).unwrap().parse().unwrap();
        assert_eq!(src, addr.ip());
    }
    if data.len() >= 16 {
        let mut head = [0u8; 16];
        head.copy_from_slice(&data[..16]);
        let body = &data[16..];
        if let Ok(Some(_)) = parse_v2(&head, body) {
            let len = u16::from_be_bytes([head[14], head[15]]) as usize;
            assert_eq!(len, body.len());
        }
    }
});
