//! mongodb's relaxed JSON filters (`{enabled: 1}`, single quotes, Extended
//! JSON): `monitors::mongo::relaxed_json::parse_filter`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitors::mongo::relaxed_json::parse_filter;

fuzz_target!(|s: &str| {
    if let Ok(doc) = parse_filter(s) {
        // strict JSON of what was read reads back to the same document
        let strict = bson::Bson::Document(doc.clone())
            .into_canonical_extjson()
            .to_string();
        let again = parse_filter(&strict).unwrap_or_else(|e| panic!("{strict}: {e}"));
        // (NaN is never equal to itself)
        if !strict.contains("NaN") {
            assert_eq!(again, doc, "{strict}");
        }
    }
});
