//! SASL responses: base64 decoding, PLAIN (authzid NUL authcid NUL password) and LOGIN fields.
#![no_main]
#![forbid(unsafe_code)]
use libfuzzer_sys::fuzz_target;
use postern_auth::sasl;

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = sasl::decode_response(data) {
        let _ = sasl::decode_plain(&decoded);
        let _ = sasl::decode_login_field(&decoded);
    }
    let _ = sasl::decode_plain(data);
});
