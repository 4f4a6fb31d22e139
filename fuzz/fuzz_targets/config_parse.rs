//! `Config::parse`: TOML → raw structs → validated model, and the error messages that point
//! at file, line, key and value. Inputs that are not UTF-8 are skipped (the daemon reads the
//! file with `read_to_string`, which refuses them before parsing).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use outbound_guard::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    // An absolute, made-up location: relative paths in the file are resolved against it.
    let path = Path::new("/etc/outbound-guard/plugin.toml");
    match Config::parse(path, source) {
        Ok(config) => {
            let _ = format!("{config:?}");
        }
        Err(error) => {
            let _ = error.to_string();
            if let Some(line) = error.invalid().and_then(|invalid| invalid.line) {
                let lines = source.bytes().filter(|&b| b == b'\n').count() + 1;
                assert!((1..=lines).contains(&line), "line {line} of a {lines}-line file");
            }
        }
    }
});
