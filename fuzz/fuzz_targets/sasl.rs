//! SASL responses: base64 decoding, PLAIN (authzid NUL authcid NUL password) and LOGIN fields,
//! OAUTHBEARER and XOAUTH2 client responses,
//! and SCRAM-SHA-256(-PLUS) messages: a client-first message, then (split at the first NUL) a
//! client-final message against the server-first that answered it.
#![no_main]
#![forbid(unsafe_code)]
use libfuzzer_sys::fuzz_target;
use postern_auth::{sasl, scram};

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = sasl::decode_response(data) {
        let _ = sasl::decode_plain(&decoded);
        let _ = sasl::decode_login_field(&decoded);
    }
    let _ = sasl::decode_plain(data);
    let _ = sasl::decode_bearer(sasl::Mechanism::OauthBearer, data);
    let _ = sasl::decode_bearer(sasl::Mechanism::Xoauth2, data);

    let (first, last) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let exporter = [7u8; 32];
    let cb = scram::Bindings {
        exporter: Some(&exporter),
        end_point: Some(b"end-point"),
    };
    let _ = scram::peek_username(first);
    for plus in [false, true] {
        if let Ok(f) = scram::ClientFirst::parse(first, plus, cb) {
            let (state, msg) = f.server_first(b"salt", 4096);
            assert!(msg.starts_with("r="));
            if let Ok(proof) = state.client_final(last) {
                let v = scram::Verifier {
                    stored_key: [1; 32],
                    server_key: [2; 32],
                };
                let _ = proof.check(&v);
            }
        }
    }
});
