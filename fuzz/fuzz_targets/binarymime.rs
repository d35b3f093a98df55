//! BINARYMIME's downgrade: any message in, and what comes out is accepted by the BDAT content
//! rules (no NUL, no bare CR or LF), with the same parts.
#![no_main]
#![forbid(unsafe_code)]
use libfuzzer_sys::fuzz_target;
use mail_parser::{MessageParser, PartType};

fuzz_target!(|data: &[u8]| {
    let Ok(out) = postern_smtp::binarymime::downgrade(data) else {
        return;
    };
    assert!(
        postern_smtp::data::check_chunked(&out).is_ok(),
        "downgrade left binary octets"
    );
    // as many leaf parts after as before (a part's content is only re-encoded)
    let leaves = |raw: &[u8]| -> Option<Vec<Vec<u8>>> {
        let m = MessageParser::new().parse(raw)?;
        Some(
            m.parts
                .iter()
                .filter(|p| !matches!(p.body, PartType::Multipart(_) | PartType::Message(_)))
                .map(|p| p.contents().to_vec())
                .collect(),
        )
    };
    if let (Some(a), Some(b)) = (leaves(data), leaves(&out)) {
        assert_eq!(a.len(), b.len(), "parts lost or gained");
    }
});
