//! The configuration loader: TOML parsing into the typed config, then validation.
#![no_main]
#![forbid(unsafe_code)]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cfg) = postern_config::Config::parse(text) {
            let _ = cfg.validate();
        }
    }
});
