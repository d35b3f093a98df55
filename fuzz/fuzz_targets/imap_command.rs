//! IMAP input as the server frames and decodes it: imap-codec's Fragmentizer (lines and
//! literals, capped), our own parsers of what imap-codec does not parse (ESEARCH's RETURN,
//! LIST-EXTENDED, SEARCHRES's `$`, APPEND UTF8), then the CommandCodec on each complete message.
#![no_main]
#![forbid(unsafe_code)]
use imap_codec::decode::Decoder;
use imap_codec::fragmentizer::{FragmentInfo, Fragmentizer};
use imap_codec::imap_types::IntoStatic;
use imap_codec::CommandCodec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut frag = Fragmentizer::new(64 * 1024);
    frag.enqueue_bytes(data);
    let codec = CommandCodec::default();
    let mut steps = 0;
    while let Some(info) = frag.progress() {
        steps += 1;
        assert!(steps < 1_000_000);
        if let FragmentInfo::Line { .. } = info {
            if frag.is_message_complete() {
                let bytes = frag.message_bytes().to_vec();
                let _ = postern_imap::listext::parse(&bytes);
                let bytes = postern_imap::utf8::unwrap_append(&bytes).unwrap_or(bytes);
                let bytes = match postern_imap::search::split_return(&bytes) {
                    Some(Ok((plain, _))) => plain,
                    _ => bytes,
                };
                let bytes = match postern_imap::search::substitute_saved(&bytes, &[3, 9], &[1, 2]) {
                    Some((b, _)) => b,
                    None => bytes,
                };
                if let Ok((_, cmd)) = codec.decode(&bytes) {
                    let _ = cmd.into_static();
                }
            }
        }
    }
});
