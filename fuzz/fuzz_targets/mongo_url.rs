//! mongodb:// and mongodb2:// URLs (`monitors::mongo::url::parse`, all
//! three grammars) and their masking (`mask_password`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitors::mongo::url::{mask_password, parse};

fuzz_target!(|s: &str| {
    let candidates = [
        s.to_string(),
        format!("mongodb://{s}"),
        format!("mongodb2://{s}"),
    ];
    for url in &candidates {
        let _ = mask_password(url);
        if let Ok(u) = parse(url) {
            let _ = format!("{u:?}");
            assert!(!u.database.is_empty() && !u.collection.is_empty());
        }
    }
});
