//! One vassal document -> one [`VassalSpec`] (docs/monitors/mongodb.md).
//!
//! | field    | type                                  | meaning |
//! |----------|---------------------------------------|---------|
//! | `name`   | string                                | the vassal name (a config extension, no `/`) |
//! | `config` | string                                | the config text, sent over the config pipe; empty or missing: the file `name` in the emperor's directory |
//! | `ts`     | Date, or int/float seconds            | the change key: a larger ts reloads; missing = 0 (never reloads) |
//! | `uid`    | int                                   | tyrant mode owner (missing or negative = 0) |
//! | `gid`    | int                                   | tyrant mode group (missing or negative = 0) |
//! | `socket` | string                                | on-demand socket; empty or missing = a normal vassal |
//! | `memory_max`, `memory_high` | string (`64M`) or int (bytes) | the vassal's memory limits (docs/resources.md); null or missing: none |
//! | `cpu_max` | number (cores) or string (`0.5`)     | its CPU limit |
//! | `pids_max` | int or string                       | its process limit |

use std::path::PathBuf;

use bson::{Bson, Document};
use emperor::{ChangeKey, ConfigSource, MonitorOptions, NamePolicy, Owner, VassalName, VassalSpec};

/// The fields a pass reads (the query's projection).
pub const FIELDS: &[&str] = &[
    "name",
    "config",
    "ts",
    "uid",
    "gid",
    "socket",
    "memory_max",
    "memory_high",
    "cpu_max",
    "pids_max",
];

/// The limits the document's limit fields set (`None`: none).
fn limits(doc: &Document) -> Result<Option<emperor::cgroup::limits::Limits>, String> {
    let mut limits = emperor::cgroup::limits::Limits::default();
    let mut any = false;
    for key in emperor::cgroup::limits::KEYS {
        let field = key.replace('-', "_");
        let text = match doc.get(&field) {
            None | Some(Bson::Null) => continue,
            Some(Bson::String(s)) if s.trim().is_empty() => continue,
            Some(Bson::String(s)) => s.trim().to_string(),
            Some(Bson::Int32(v)) => v.to_string(),
            Some(Bson::Int64(v)) => v.to_string(),
            Some(Bson::Double(v)) if key == "cpu-max" => v.to_string(),
            Some(Bson::Double(v)) if v.fract() == 0.0 && *v >= 0.0 && *v < 9.2e18 => {
                (*v as u64).to_string()
            }
            Some(Bson::Double(v)) => {
                return Err(format!(
                    "{field} must be a whole number (bytes, processes) or a string, not {v}"
                ))
            }
            Some(other) => {
                return Err(format!(
                    "{field} must be a number or a string, not a {}",
                    type_name(other)
                ))
            }
        };
        limits
            .set(key, &text)
            .map_err(|e| format!("{field} {text:?}: {e}"))?;
        any = true;
    }
    Ok(any.then_some(limits))
}

/// A short, password-free label of a document for log lines: its `_id`
/// and, when readable, its name.
pub fn label(doc: &Document) -> String {
    let id = match doc.get("_id") {
        Some(Bson::ObjectId(o)) => o.to_hex(),
        Some(Bson::String(s)) => format!("{s:?}"),
        Some(other) => other.to_string(),
        None => "?".to_string(),
    };
    match doc.get("name") {
        Some(Bson::String(n)) => format!("_id {id} (name {n:?})"),
        _ => format!("_id {id}"),
    }
}

fn type_name(b: &Bson) -> String {
    format!("{:?}", b.element_type()).to_lowercase()
}

/// The change key from `ts`: a BSON Date (milliseconds), or seconds since
/// the epoch as an integer or a float (uWSGI would read those as 0). A
/// missing or null ts is 0, so the vassal never reloads, as in uWSGI.
pub fn change_key(ts: Option<&Bson>) -> Result<ChangeKey, String> {
    const NS: i128 = 1_000_000_000;
    match ts {
        None | Some(Bson::Null) => Ok(ChangeKey::Stamp(0)),
        Some(Bson::DateTime(d)) => Ok(ChangeKey::Stamp(d.timestamp_millis() as i128 * 1_000_000)),
        Some(Bson::Int32(s)) => Ok(ChangeKey::Stamp(*s as i128 * NS)),
        Some(Bson::Int64(s)) => Ok(ChangeKey::Stamp(*s as i128 * NS)),
        Some(Bson::Double(s)) if s.is_finite() => Ok(ChangeKey::from_secs_f64(*s)),
        Some(Bson::Double(s)) => Err(format!("ts is {s}, not a time")),
        Some(Bson::Timestamp(t)) => Ok(ChangeKey::Stamp(t.time as i128 * NS)),
        Some(other) => Err(format!(
            "ts must be a Date or a number of seconds since the epoch, not a {}",
            type_name(other)
        )),
    }
}

fn id_field(doc: &Document, field: &str) -> Result<Option<u32>, String> {
    let v = match doc.get(field) {
        None | Some(Bson::Null) => return Ok(None),
        Some(Bson::Int32(v)) => *v as i64,
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Double(v)) if v.fract() == 0.0 && v.is_finite() => *v as i64,
        Some(other) => {
            return Err(format!(
                "{field} must be an integer, not {}",
                if let Bson::Double(d) = other {
                    d.to_string()
                } else {
                    format!("a {}", type_name(other))
                }
            ))
        }
    };
    // uWSGI reads a negative id as 0, which tyrant mode then refuses
    u32::try_from(v.max(0))
        .map(Some)
        .map_err(|_| format!("{field} {v} is out of range"))
}

fn optional_string<'a>(doc: &'a Document, field: &str) -> Result<Option<&'a str>, String> {
    match doc.get(field) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::String(s)) if s.is_empty() => Ok(None),
        Some(Bson::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!(
            "{field} must be a string, not a {}",
            type_name(other)
        )),
    }
}

/// Turns one document into a spec, or says why it is skipped.
pub fn spec_from_document(doc: &Document, opts: &MonitorOptions) -> Result<VassalSpec, String> {
    let name = match doc.get("name") {
        Some(Bson::String(s)) => s.as_str(),
        None | Some(Bson::Null) => return Err("no name field".to_string()),
        Some(other) => return Err(format!("name must be a string, not a {}", type_name(other))),
    };
    let name =
        VassalName::parse(name, &opts.extensions, NamePolicy::Plain).map_err(|e| e.to_string())?;
    let key = change_key(doc.get("ts"))?;
    let config = match optional_string(doc, "config")? {
        Some(text) => ConfigSource::Inline(text.into()),
        // uWSGI: no config text means the file `name`, relative to the emperor's directory
        None => ConfigSource::File(PathBuf::from(name.as_str())),
    };
    let workdir = match config {
        ConfigSource::File(_) => Some(opts.cwd.clone()),
        _ => None,
    };
    let uid = id_field(doc, "uid")?;
    let gid = id_field(doc, "gid")?;
    let owner = match (uid, gid) {
        (None, None) => None,
        (uid, gid) => Some(Owner {
            uid: uid.unwrap_or(0),
            gid: gid.unwrap_or(0),
        }),
    };
    let socket = optional_string(doc, "socket")?.map(str::to_string);
    Ok(VassalSpec {
        name,
        config,
        key,
        owner,
        socket,
        workdir,
        limits: limits(doc)?.map(Box::new),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, oid::ObjectId, DateTime};

    fn opts() -> MonitorOptions {
        MonitorOptions {
            cwd: PathBuf::from("/srv/emperor"),
            ..MonitorOptions::default()
        }
    }

    #[test]
    fn full_document() {
        let d = doc! {
            "_id": ObjectId::new(), "name": "app.ini", "config": "[uwsgi]\nmaster = true\n",
            "ts": DateTime::from_millis(1_700_000_000_123), "uid": 1000, "gid": 1001_i64,
            "socket": "127.0.0.1:3031", "enabled": 1,
        };
        let s = spec_from_document(&d, &opts()).unwrap();
        assert_eq!(s.name.as_str(), "app.ini");
        assert_eq!(
            s.config,
            ConfigSource::Inline("[uwsgi]\nmaster = true\n".into())
        );
        assert_eq!(s.key, ChangeKey::Stamp(1_700_000_000_123_000_000));
        assert_eq!(
            s.owner,
            Some(Owner {
                uid: 1000,
                gid: 1001
            })
        );
        assert_eq!(s.socket.as_deref(), Some("127.0.0.1:3031"));
        assert_eq!(s.workdir, None);
    }

    #[test]
    fn empty_config_is_the_file_name_in_cwd() {
        for d in [doc! {"name": "f.ini", "config": ""}, doc! {"name": "f.ini"}] {
            let s = spec_from_document(&d, &opts()).unwrap();
            assert_eq!(s.config, ConfigSource::File(PathBuf::from("f.ini")));
            assert_eq!(s.workdir, Some(PathBuf::from("/srv/emperor")));
            assert_eq!(s.key, ChangeKey::Stamp(0));
            assert_eq!(s.owner, None);
            assert_eq!(s.socket, None);
        }
    }

    #[test]
    fn ts_forms() {
        assert_eq!(
            change_key(Some(&Bson::Int32(10))).unwrap(),
            ChangeKey::Stamp(10_000_000_000)
        );
        assert_eq!(
            change_key(Some(&Bson::Int64(1_700_000_000))).unwrap(),
            ChangeKey::Stamp(1_700_000_000_000_000_000)
        );
        assert_eq!(
            change_key(Some(&Bson::Double(1.5))).unwrap(),
            ChangeKey::Stamp(1_500_000_000)
        );
        assert_eq!(
            change_key(Some(&Bson::DateTime(DateTime::from_millis(1500)))).unwrap(),
            ChangeKey::Stamp(1_500_000_000)
        );
        assert_eq!(change_key(None).unwrap(), ChangeKey::Stamp(0));
        // a float of seconds orders with a Date of the same instant
        let date = change_key(Some(&Bson::DateTime(DateTime::from_millis(
            1_700_000_000_250,
        ))))
        .unwrap();
        let secs = change_key(Some(&Bson::Double(1_700_000_000.5))).unwrap();
        assert!(secs.is_newer_than(&date));
        assert!(change_key(Some(&Bson::String("yesterday".into())))
            .unwrap_err()
            .contains("string"));
        assert!(change_key(Some(&Bson::Double(f64::NAN))).is_err());
    }

    #[test]
    fn owner_and_socket_rules() {
        let s =
            spec_from_document(&doc! {"name": "a.ini", "uid": -5, "socket": ""}, &opts()).unwrap();
        assert_eq!(s.owner, Some(Owner { uid: 0, gid: 0 }));
        assert_eq!(s.socket, None);
        let s = spec_from_document(&doc! {"name": "a.ini", "gid": 7.0}, &opts()).unwrap();
        assert_eq!(s.owner, Some(Owner { uid: 0, gid: 7 }));
    }

    #[test]
    fn limit_fields() {
        let d = doc! {"name": "a.ini", "memory_max": "64M", "memory_high": 1_i64 << 25,
        "cpu_max": 0.5, "pids_max": 20};
        let s = spec_from_document(&d, &opts()).unwrap();
        let l = s.limits.as_deref().unwrap();
        assert_eq!(l.memory_max, Some(64 << 20));
        assert_eq!(l.memory_high, Some(1 << 25));
        assert_eq!(l.cpu_max, Some(0.5));
        assert_eq!(l.pids_max, Some(20));
        let s = spec_from_document(
            &doc! {"name": "a.ini", "memory_max": null, "cpu_max": ""},
            &opts(),
        )
        .unwrap();
        assert_eq!(s.limits, None);
        for (d, why) in [
            (
                doc! {"name": "a.ini", "pids_max": 0},
                "pids_max \"0\": a number of processes",
            ),
            (
                doc! {"name": "a.ini", "memory_max": "lots"},
                "memory_max \"lots\"",
            ),
            (
                doc! {"name": "a.ini", "memory_max": 1.5},
                "memory_max must be a whole number (bytes, processes) or a string, not 1.5",
            ),
            (
                doc! {"name": "a.ini", "cpu_max": true},
                "cpu_max must be a number or a string, not a boolean",
            ),
        ] {
            let e = spec_from_document(&d, &opts()).unwrap_err();
            assert!(e.contains(why), "{d}: {e:?} should mention {why:?}");
        }
    }

    #[test]
    fn bad_documents_say_why() {
        let o = opts();
        let cases = [
            (doc! {"config": "x"}, "no name"),
            (doc! {"name": 5}, "name must be a string"),
            (doc! {"name": "app.txt"}, "config extension"),
            (doc! {"name": "../x.ini"}, "path separator"),
            (doc! {"name": ""}, "empty"),
            (
                doc! {"name": "a.ini", "config": 1},
                "config must be a string",
            ),
            (doc! {"name": "a.ini", "ts": "now"}, "ts must be"),
            (
                doc! {"name": "a.ini", "uid": "root"},
                "uid must be an integer",
            ),
            (doc! {"name": "a.ini", "gid": 1.5}, "gid must be an integer"),
            (doc! {"name": "a.ini", "uid": 1_i64 << 40}, "out of range"),
            (
                doc! {"name": "a.ini", "socket": 3031},
                "socket must be a string",
            ),
        ];
        for (d, why) in cases {
            let e = spec_from_document(&d, &o).unwrap_err();
            assert!(e.contains(why), "{d}: {e:?} should mention {why:?}");
        }
    }

    #[test]
    fn labels() {
        let id = ObjectId::new();
        assert_eq!(
            label(&doc! {"_id": id, "name": "a.ini"}),
            format!("_id {} (name \"a.ini\")", id.to_hex())
        );
        assert_eq!(label(&doc! {"_id": 7}), "_id 7");
    }
}
