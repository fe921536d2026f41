//! mongodb:// documents (`monitors::mongo::document`): raw BSON bytes as
//! the server sends them, and documents built from typed fields, →
//! `spec_from_document`, `label`, `change_key`.
//!
//! Input: a zero byte then a BSON document as the server sends it; any
//! other first byte: the rest builds a document of typed `name`, `config`,
//! `ts`, `uid`, `gid`, `socket` and `_id` fields (`arbitrary`).
#![no_main]

mod common;

use arbitrary::Arbitrary;
use bson::{Bson, Document, RawDocument};
use libfuzzer_sys::fuzz_target;
use monitors::mongo::document::{change_key, label, spec_from_document, FIELDS};

#[derive(Debug, Arbitrary)]
enum Value {
    Null,
    Str(String),
    I32(i32),
    I64(i64),
    F64(f64),
    Bool(bool),
    Date(i64),
    Timestamp(u32, u32),
    Doc(Vec<(String, String)>),
}

impl Value {
    fn bson(self) -> Bson {
        match self {
            Value::Null => Bson::Null,
            Value::Str(s) => Bson::String(s),
            Value::I32(v) => Bson::Int32(v),
            Value::I64(v) => Bson::Int64(v),
            Value::F64(v) => Bson::Double(v),
            Value::Bool(v) => Bson::Boolean(v),
            Value::Date(ms) => Bson::DateTime(bson::DateTime::from_millis(ms)),
            Value::Timestamp(time, increment) => {
                Bson::Timestamp(bson::Timestamp { time, increment })
            }
            Value::Doc(kv) => {
                Bson::Document(kv.into_iter().map(|(k, v)| (k, Bson::String(v))).collect())
            }
        }
    }
}

fn check(doc: &Document) {
    let opts = common::opts(&[]);
    let _ = label(doc);
    let _ = change_key(doc.get("ts"));
    if let Ok(spec) = spec_from_document(doc, &opts) {
        assert_eq!(Some(spec.name.as_str()), doc.get_str("name").ok());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode {
        0 => {
            let Ok(raw) = RawDocument::from_bytes(rest) else {
                return;
            };
            // what the monitor does with a document it cannot read
            let _ = raw.get("_id").ok().flatten().map(|v| format!("{v:?}"));
            if let Ok(doc) = Document::try_from(raw) {
                check(&doc);
            }
        }
        _ => {
            let mut u = arbitrary::Unstructured::new(rest);
            let Ok(values) = <[Option<Value>; 7]>::arbitrary(&mut u) else {
                return;
            };
            let mut doc = Document::new();
            let names = FIELDS.iter().copied().chain(["_id"]);
            for (name, v) in names.zip(values) {
                if let Some(v) = v {
                    doc.insert(name, v.bson());
                }
            }
            check(&doc);
        }
    }
});
