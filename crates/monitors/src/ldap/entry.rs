//! One LDAP entry -> one [`VassalSpec`], and the change key.
//!
//! The change key is, in order of preference: the `x-key=` attribute when
//! the URL names one; OpenLDAP's `entryCSN` (microseconds plus a change
//! counter, so two edits within one second still reload); the standard
//! `modifyTimestamp` (whole seconds).

use std::collections::HashMap;

use emperor::{ChangeKey, MonitorOptions, NamePolicy, Owner, VassalName, VassalSpec};

use super::url::AttrMap;

/// The parts of a search result entry the monitor reads.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// The entry's DN (for messages).
    pub dn: String,
    /// Text values by attribute name.
    pub attrs: HashMap<String, Vec<String>>,
    /// Attributes with a value that is not UTF-8.
    pub bin_attrs: HashMap<String, Vec<Vec<u8>>>,
}

impl From<ldap3::SearchEntry> for Entry {
    fn from(e: ldap3::SearchEntry) -> Self {
        Entry {
            dn: e.dn,
            attrs: e.attrs,
            bin_attrs: e.bin_attrs,
        }
    }
}

impl Entry {
    /// The single value of `attr` (names compare case-insensitively, as in
    /// LDAP), `None` when absent, an error when it has several values or
    /// one that is not UTF-8.
    pub fn single(&self, attr: &str) -> Result<Option<&str>, String> {
        if self.bin_attrs.keys().any(|k| k.eq_ignore_ascii_case(attr)) {
            return Err(format!("attribute {attr} is not valid UTF-8"));
        }
        let values = self
            .attrs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(attr))
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[]);
        match values {
            [] => Ok(None),
            [one] => Ok(Some(one.as_str())),
            many => Err(format!(
                "attribute {attr} has {} values; one is expected",
                many.len()
            )),
        }
    }

    /// The vassal this entry describes, or why it is refused.
    pub fn spec(
        &self,
        map: &AttrMap,
        key_attr: Option<&str>,
        opts: &MonitorOptions,
    ) -> Result<VassalSpec, String> {
        let raw_name = self
            .single(&map.name)?
            .ok_or_else(|| format!("no {} attribute", map.name))?;
        let name = VassalName::parse(raw_name, &opts.extensions, NamePolicy::Plain)
            .map_err(|e| e.to_string())?;
        let config = self
            .single(&map.config)?
            .ok_or_else(|| format!("no {} attribute", map.config))?;
        if config.trim().is_empty() {
            return Err(format!("attribute {} is empty", map.config));
        }
        let number = |attr: &str| -> Result<Option<u32>, String> {
            self.single(attr)?
                .map(|v| {
                    v.trim()
                        .parse::<u32>()
                        .map_err(|_| format!("attribute {attr} is {v:?}, not a numeric id"))
                })
                .transpose()
        };
        let owner = match (number(&map.uid)?, number(&map.gid)?) {
            (Some(uid), Some(gid)) => Some(Owner { uid, gid }),
            (None, None) => None,
            (Some(_), None) => return Err(format!("{} without {}", map.uid, map.gid)),
            (None, Some(_)) => return Err(format!("{} without {}", map.gid, map.uid)),
        };
        let socket = match self.single(&map.socket)? {
            Some(s) if s.trim().is_empty() => None,
            Some(s) => Some(s.trim().to_string()),
            None => None,
        };
        let key = self.key(key_attr)?;
        let mut spec = VassalSpec::inline(name, config, key);
        spec.owner = owner;
        spec.socket = socket;
        Ok(spec)
    }

    fn key(&self, key_attr: Option<&str>) -> Result<ChangeKey, String> {
        if let Some(attr) = key_attr {
            let v = self
                .single(attr)?
                .ok_or_else(|| format!("no {attr} attribute (the x-key change key)"))?;
            return parse_stamp(v).map_err(|e| format!("attribute {attr}: {e}"));
        }
        if let Some(csn) = self.single("entryCSN")? {
            return parse_csn(csn).map_err(|e| format!("entryCSN: {e}"));
        }
        match self.single("modifyTimestamp")? {
            Some(ts) => parse_generalized_time(ts)
                .map(ChangeKey::Stamp)
                .map_err(|e| format!("modifyTimestamp: {e}")),
            None => Err(
                "neither entryCSN nor modifyTimestamp was returned (may the bind DN read operational attributes?)"
                    .to_string(),
            ),
        }
    }
}

/// An `x-key` value: an OpenLDAP CSN, a GeneralizedTime or an integer
/// (a revision counter kept by whoever writes the entry).
pub fn parse_stamp(v: &str) -> Result<ChangeKey, String> {
    let v = v.trim();
    if v.contains('#') {
        return parse_csn(v);
    }
    if let Ok(n) = v.parse::<i128>() {
        return Ok(ChangeKey::Stamp(n));
    }
    parse_generalized_time(v).map(ChangeKey::Stamp)
}

/// An OpenLDAP CSN, `YYYYmmddHHMMSS.ffffffZ#COUNT#SID#MOD`: nanoseconds of
/// its time, with the change counter in the sub-microsecond digits so that
/// two changes within one microsecond still order.
pub fn parse_csn(v: &str) -> Result<ChangeKey, String> {
    let mut parts = v.split('#');
    let time = parts.next().unwrap_or("");
    let count = parts
        .next()
        .ok_or_else(|| format!("{v:?} is not a CSN (TIME#COUNT#SID#MOD)"))?;
    // hex digits only: from_str_radix also takes a sign, and a count of
    // -2^127 overflowed the sum below (a panic in a debug build, a wrapped
    // key in a release build)
    let count = Some(count)
        .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|c| i128::from_str_radix(c, 16).ok())
        .ok_or_else(|| format!("{v:?}: change count {count:?} is not hexadecimal"))?;
    let ns = parse_generalized_time(time)?;
    Ok(ChangeKey::Stamp(ns + count.min(999)))
}

/// A GeneralizedTime (RFC 4517 §3.3.13): `YYYYmmddHH[MM[SS]][.fff](Z|±HH[MM])`,
/// as nanoseconds since the epoch.
pub fn parse_generalized_time(v: &str) -> Result<i128, String> {
    let err = || format!("{v:?} is not a GeneralizedTime (YYYYmmddHHMMSSZ)");
    let b = v.as_bytes();
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if !matches!(digits, 10 | 12 | 14) {
        return Err(err());
    }
    let num = |from: usize, len: usize| -> i64 {
        v[from..from + len]
            .bytes()
            .fold(0i64, |a, d| a * 10 + i64::from(d - b'0'))
    };
    let (year, month, day, hour) = (num(0, 4), num(4, 2), num(6, 2), num(8, 2));
    let minute = if digits >= 12 { num(10, 2) } else { 0 };
    let second = if digits >= 14 { num(12, 2) } else { 0 };
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(err());
    }
    let mut rest = &v[digits..];
    let mut frac_ns: i128 = 0;
    if let Some(r) = rest.strip_prefix(['.', ',']) {
        let n = r.bytes().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return Err(err());
        }
        let mut scale: i128 = 100_000_000;
        for d in r[..n].bytes().take(9) {
            frac_ns += i128::from(d - b'0') * scale;
            scale /= 10;
        }
        // a fraction of a minute or an hour when seconds are left out
        frac_ns *= match digits {
            10 => 3600,
            12 => 60,
            _ => 1,
        };
        rest = &r[n..];
    }
    let offset_secs: i64 = match rest {
        "Z" => 0,
        r if (r.len() == 3 || r.len() == 5)
            && (r.starts_with('+') || r.starts_with('-'))
            && r[1..].bytes().all(|c| c.is_ascii_digit()) =>
        {
            let h: i64 = r[1..3].parse().map_err(|_| err())?;
            let m: i64 = if r.len() == 5 {
                r[3..5].parse().map_err(|_| err())?
            } else {
                0
            };
            let s = h * 3600 + m * 60;
            if r.starts_with('-') {
                -s
            } else {
                s
            }
        }
        _ => return Err(err()),
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Ok(i128::from(secs) * 1_000_000_000 + frac_ns)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csn_count_is_hex_digits_only() {
        // found by review while writing the ldap fuzz target: a signed count
        // was accepted, and i128::MIN overflowed the sum for a time before 1970
        for v in [
            "19000101000000Z#-80000000000000000000000000000000#000#000000",
            "20240101000000Z#-1#000#000000",
            "20240101000000Z#+1#000#000000",
            "20240101000000Z##000#000000",
        ] {
            assert!(parse_csn(v).is_err(), "{v}");
        }
        let t = parse_generalized_time("19000101000000Z").unwrap();
        assert_eq!(
            parse_csn("19000101000000Z#00000a#000#000000"),
            Ok(ChangeKey::Stamp(t + 10))
        );
    }

    fn entry(pairs: &[(&str, &str)]) -> Entry {
        let mut e = Entry {
            dn: "uwsgiVassalName=x,ou=vassals,dc=example,dc=com".into(),
            ..Entry::default()
        };
        for (k, v) in pairs {
            e.attrs
                .entry(k.to_string())
                .or_default()
                .push(v.to_string());
        }
        e
    }

    fn spec(e: &Entry) -> Result<VassalSpec, String> {
        e.spec(&AttrMap::default(), None, &MonitorOptions::default())
    }

    #[test]
    fn generalized_time() {
        assert_eq!(parse_generalized_time("19700101000000Z"), Ok(0));
        // `date -u -d 2026-11-24T23:04:05Z +%s` = 1795561445
        assert_eq!(
            parse_generalized_time("20261124230405Z"),
            Ok(1_795_561_445 * 1_000_000_000)
        );
        assert_eq!(
            parse_generalized_time("20261124230405.25Z"),
            Ok(1_795_561_445 * 1_000_000_000 + 250_000_000)
        );
        assert_eq!(
            parse_generalized_time("20261125010405+0200"),
            Ok(1_795_561_445 * 1_000_000_000)
        );
        assert_eq!(
            parse_generalized_time("2026112423Z"),
            Ok((1_795_561_445 - 4 * 60 - 5) * 1_000_000_000)
        );
        for bad in [
            "",
            "2026",
            "20261324000000Z",
            "20261124230405",
            "20261124230405.Z",
            "20261124230405Q",
        ] {
            assert!(parse_generalized_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn csn_orders_within_a_second() {
        let a = parse_csn("20261124230405.000100Z#000000#000#000000").unwrap();
        let b = parse_csn("20261124230405.000100Z#000001#000#000000").unwrap();
        let c = parse_csn("20261124230405.000101Z#000000#000#000000").unwrap();
        assert!(b.is_newer_than(&a) && c.is_newer_than(&b));
        assert_eq!(a.as_secs(), 1_795_561_445);
        assert!(parse_csn("20261124230405Z").is_err());
        assert!(parse_csn("20261124230405.000100Z#zz#000#000000").is_err());
    }

    #[test]
    fn stamp_attribute_forms() {
        assert_eq!(parse_stamp("42"), Ok(ChangeKey::Stamp(42)));
        assert_eq!(
            parse_stamp("19700101000001Z"),
            Ok(ChangeKey::Stamp(1_000_000_000))
        );
        assert!(parse_stamp("yesterday").is_err());
    }

    #[test]
    fn a_full_entry() {
        let e = entry(&[
            ("uwsgiVassalName", "app.ini"),
            ("uwsgiVassalConfig", "[uwsgi]\nmaster = true\n"),
            ("uwsgiVassalUid", "1000"),
            ("uwsgiVassalGid", "1001"),
            ("uwsgiVassalSocket", "127.0.0.1:9000"),
            ("entryCSN", "19700101000001.000000Z#000000#000#000000"),
            ("modifyTimestamp", "20261124230405Z"),
        ]);
        let s = spec(&e).unwrap();
        assert_eq!(s.name.as_str(), "app.ini");
        assert_eq!(
            s.config,
            emperor::ConfigSource::Inline("[uwsgi]\nmaster = true\n".into())
        );
        assert_eq!(
            s.owner,
            Some(Owner {
                uid: 1000,
                gid: 1001
            })
        );
        assert_eq!(s.socket.as_deref(), Some("127.0.0.1:9000"));
        // entryCSN wins over modifyTimestamp
        assert_eq!(s.key, ChangeKey::Stamp(1_000_000_000));
        // an explicit key attribute wins over both
        let s = e
            .spec(
                &AttrMap::default(),
                Some("uwsgiVassalUid"),
                &MonitorOptions::default(),
            )
            .unwrap();
        assert_eq!(s.key, ChangeKey::Stamp(1000));
    }

    #[test]
    fn attribute_names_are_case_insensitive_and_modify_timestamp_is_the_fallback() {
        let e = entry(&[
            ("UWSGIVASSALNAME", "a.ini"),
            ("uwsgivassalconfig", "[uwsgi]"),
            ("modifyTimestamp", "19700101000002Z"),
        ]);
        let s = spec(&e).unwrap();
        assert_eq!(s.name.as_str(), "a.ini");
        assert_eq!(s.key, ChangeKey::Stamp(2_000_000_000));
        assert_eq!(s.owner, None);
        assert_eq!(s.socket, None);
    }

    #[test]
    fn bad_entries_say_why() {
        let ts = ("modifyTimestamp", "19700101000002Z");
        let cases: Vec<(Entry, &str)> = vec![
            (
                entry(&[("uwsgiVassalConfig", "x"), ts]),
                "no uwsgiVassalName",
            ),
            (
                entry(&[("uwsgiVassalName", "a.ini"), ts]),
                "no uwsgiVassalConfig",
            ),
            (
                entry(&[("uwsgiVassalName", "a.txt"), ("uwsgiVassalConfig", "x"), ts]),
                "config extension",
            ),
            (
                entry(&[
                    ("uwsgiVassalName", "../a.ini"),
                    ("uwsgiVassalConfig", "x"),
                    ts,
                ]),
                "'/'",
            ),
            (
                entry(&[
                    ("uwsgiVassalName", "-a.ini"),
                    ("uwsgiVassalConfig", "x"),
                    ts,
                ]),
                "'-'",
            ),
            (
                entry(&[
                    ("uwsgiVassalName", "a.ini"),
                    ("uwsgiVassalConfig", "  "),
                    ts,
                ]),
                "empty",
            ),
            (
                entry(&[
                    ("uwsgiVassalName", "a.ini"),
                    ("uwsgiVassalName", "b.ini"),
                    ("uwsgiVassalConfig", "x"),
                    ts,
                ]),
                "2 values",
            ),
            (
                entry(&[
                    ("uwsgiVassalName", "a.ini"),
                    ("uwsgiVassalConfig", "x"),
                    ("uwsgiVassalUid", "root"),
                    ("uwsgiVassalGid", "0"),
                    ts,
                ]),
                "not a numeric id",
            ),
            (
                entry(&[
                    ("uwsgiVassalName", "a.ini"),
                    ("uwsgiVassalConfig", "x"),
                    ("uwsgiVassalUid", "5"),
                    ts,
                ]),
                "without uwsgiVassalGid",
            ),
            (
                entry(&[("uwsgiVassalName", "a.ini"), ("uwsgiVassalConfig", "x")]),
                "neither entryCSN nor modifyTimestamp",
            ),
            (
                entry(&[
                    ("uwsgiVassalName", "a.ini"),
                    ("uwsgiVassalConfig", "x"),
                    ("modifyTimestamp", "soon"),
                ]),
                "GeneralizedTime",
            ),
        ];
        for (e, needle) in cases {
            let err = spec(&e).unwrap_err();
            assert!(err.contains(needle), "{:?}: {err}", e.attrs);
        }
        let mut e = entry(&[("uwsgiVassalName", "a.ini"), ts]);
        e.bin_attrs
            .insert("uwsgiVassalConfig".into(), vec![vec![0xff, 0xfe]]);
        assert!(spec(&e).unwrap_err().contains("not valid UTF-8"));
    }
}
