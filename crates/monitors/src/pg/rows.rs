//! Turning query rows into vassal specs (docs/monitors/pg.md).
//!
//! A row is `name, config, ts[, uid, gid[, socket]]`, every column read as
//! text, plus any of the limit columns `memory_max`, `memory_high`,
//! `cpu_max`, `pids_max`, found by name wherever they are ([`Layout`]). A bad row is skipped with a warning naming it; the rest of the
//! result still counts. A row whose name is valid but whose other columns
//! are not keeps the vassal on the last spec this monitor accepted for that
//! name, so a bad edit never stops a running vassal.

use std::collections::{BTreeMap, HashMap};

use emperor::cgroup::limits::Limits;
use emperor::protocol::{check_config, ConfigPipeError};
use emperor::{ChangeKey, Extensions, NameError, NamePolicy, Owner, VassalName, VassalSpec};

use crate::session::WarnOnce;

/// The fewest columns a result may have (name, config, ts).
pub const MIN_COLUMNS: usize = 3;
/// The most columns a result may have (name, config, ts, uid, gid, socket).
pub const MAX_COLUMNS: usize = 6;

/// A result whose shape is wrong as a whole: it cannot say anything about
/// the vassals, so the monitor reports itself degraded instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultError {
    /// Fewer than 3 or more than 6 columns (the count).
    #[error("the query returns {0} columns; pg:// needs 3 to 6 (name, config, ts[, uid, gid[, socket]])")]
    ColumnCount(usize),
    /// 4 columns: a uid without its gid.
    #[error("the query returns 4 columns: a uid column needs a gid column beside it (name, config, ts, uid, gid[, socket])")]
    UidWithoutGid,
    /// A limit column appears twice (its name).
    #[error("the query returns the limit column {0} twice")]
    LimitTwice(String),
}

/// Where a result's limit columns are: each column named `memory_max`,
/// `memory_high`, `cpu_max` or `pids_max` (as PostgreSQL names them: `AS
/// memory_max`, or the table's column), with its `[imperium]` key; the
/// other columns keep uWSGI's positional meaning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    limits: Vec<(usize, &'static str)>,
}

impl Layout {
    /// The layout of a result whose columns are `names`, checked: 3 to 6
    /// columns besides the limit columns ([`check_columns`]).
    pub fn of(names: &[&str]) -> Result<Layout, ResultError> {
        let mut limits: Vec<(usize, &'static str)> = Vec::new();
        for (i, n) in names.iter().enumerate() {
            let key = emperor::cgroup::limits::KEYS
                .into_iter()
                .find(|k| k.replace('-', "_").eq_ignore_ascii_case(n));
            if let Some(key) = key {
                if limits.iter().any(|(_, k)| *k == key) {
                    return Err(ResultError::LimitTwice(n.to_string()));
                }
                limits.push((i, key));
            }
        }
        check_columns(names.len() - limits.len())?;
        Ok(Layout { limits })
    }

    /// Splits a row into uWSGI's columns and the limits it sets (`None`
    /// where it sets none: every limit column NULL or empty).
    #[allow(clippy::type_complexity)]
    fn split<'a>(
        &self,
        row: &[Option<&'a str>],
    ) -> (Vec<Option<&'a str>>, Result<Option<Limits>, RowError>) {
        if self.limits.is_empty() {
            return (row.to_vec(), Ok(None));
        }
        let cols = (0..row.len())
            .filter(|i| !self.limits.iter().any(|(j, _)| j == i))
            .map(|i| row[i])
            .collect();
        let mut limits = Limits::default();
        let mut any = false;
        for &(i, key) in &self.limits {
            if let Some(v) = row
                .get(i)
                .copied()
                .flatten()
                .map(str::trim)
                .filter(|v| !v.is_empty())
            {
                if let Err(e) = limits.set(key, v) {
                    return (cols, Err(RowError::BadLimit(key, e)));
                }
                any = true;
            }
        }
        (cols, Ok(any.then_some(limits)))
    }
}

/// Why one row was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    /// The name is NULL.
    #[error("the name column is NULL")]
    NullName,
    /// The name is not a valid vassal name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The config is NULL.
    #[error("the config column is NULL")]
    NullConfig,
    /// The config cannot go over the config pipe (too large, a NUL byte).
    #[error(transparent)]
    Config(#[from] ConfigPipeError),
    /// The ts is NULL.
    #[error("the ts column is NULL")]
    NullTs,
    /// The ts is neither seconds since the epoch nor a date (the text).
    #[error("the ts column {0:?} is not a number of seconds since the epoch, nor an ISO date or timestamp (select EXTRACT(epoch FROM ts))")]
    BadTs(String),
    /// uid and gid are not both NULL or both numbers (their texts).
    #[error("the uid/gid columns {0:?}/{1:?} are not both NULL or both numbers")]
    BadOwner(Option<String>, Option<String>),
    /// A limit column's value is not one (the column's key, why).
    #[error("the {col} column: {why}", col = .0.replace('-', "_"), why = .1)]
    BadLimit(&'static str, String),
}

/// Checks the column count of a result.
pub fn check_columns(n: usize) -> Result<(), ResultError> {
    if !(MIN_COLUMNS..=MAX_COLUMNS).contains(&n) {
        Err(ResultError::ColumnCount(n))
    } else if n == 4 {
        Err(ResultError::UidWithoutGid)
    } else {
        Ok(())
    }
}

/// Parses the ts column: seconds since the epoch, possibly fractional, or
/// a date or timestamp column as PostgreSQL prints it (see
/// `parse_iso_timestamp`).
///
/// Plain decimals (what `EXTRACT(epoch FROM ts)` prints) are read exactly to
/// the nanosecond; an exponent form goes through
/// [`ChangeKey::from_secs_f64`]. Signs, `NaN`, `inf` and anything else are
/// refused.
pub fn parse_ts(text: &str) -> Result<ChangeKey, RowError> {
    let bad = || RowError::BadTs(text.to_string());
    let t = text.trim();
    if !t.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        return Err(bad());
    }
    if let Some((int, frac)) = t.split_once('.').or(Some((t, ""))) {
        let digits = |s: &str| s.bytes().all(|c| c.is_ascii_digit());
        if digits(int) && digits(frac) {
            let secs: i128 = int.parse().map_err(|_| bad())?;
            let mut ns: i128 = 0;
            for (i, c) in frac.bytes().take(9).enumerate() {
                ns += i128::from(c - b'0') * 10i128.pow(8 - i as u32);
            }
            return secs
                .checked_mul(1_000_000_000)
                .and_then(|s| s.checked_add(ns))
                .map(ChangeKey::Stamp)
                .ok_or_else(bad);
        }
    }
    let exp_form = t
        .bytes()
        .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'));
    match t.parse::<f64>() {
        Ok(secs) if exp_form && secs.is_finite() => Ok(ChangeKey::from_secs_f64(secs)),
        _ => parse_iso_timestamp(t).ok_or_else(bad),
    }
}

/// A `timestamp`, `timestamptz` or `date` column as PostgreSQL prints it
/// with its default `DateStyle` (ISO): `2026-12-02`, `2026-12-02
/// 04:40:37.25`, `2026-12-02 04:40:37.25+01` (or `+05:30`). A timestamp
/// without a time zone counts as UTC, as `EXTRACT(epoch FROM ts)` counts
/// it, so `ts` and `EXTRACT(epoch FROM ts)` give the same stamp.
fn parse_iso_timestamp(t: &str) -> Option<ChangeKey> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    let ns = |secs: i64, sub: u32| {
        i128::from(secs)
            .checked_mul(1_000_000_000)?
            .checked_add(i128::from(sub))
            .filter(|v| *v >= 0)
            .map(ChangeKey::Stamp)
    };
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return ns(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp(), 0);
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(d) = DateTime::parse_from_str(t, f) {
            return ns(d.timestamp(), d.timestamp_subsec_nanos());
        }
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(d) = NaiveDateTime::parse_from_str(t, f) {
            let d = d.and_utc();
            return ns(d.timestamp(), d.timestamp_subsec_nanos());
        }
    }
    None
}

fn parse_owner(uid: Option<&str>, gid: Option<&str>) -> Result<Option<Owner>, RowError> {
    let bad = || RowError::BadOwner(uid.map(str::to_string), gid.map(str::to_string));
    match (uid, gid) {
        (None, None) => Ok(None),
        (Some(u), Some(g)) => {
            let uid = u.trim().parse::<u32>().map_err(|_| bad())?;
            let gid = g.trim().parse::<u32>().map_err(|_| bad())?;
            Ok(Some(Owner { uid, gid }))
        }
        _ => Err(bad()),
    }
}

/// Turns one row into a spec. `cols` has 3, 5 or 6 entries (see
/// [`check_columns`]); `None` is SQL NULL.
///
/// On error the parsed name is returned beside the error when the name
/// itself was valid.
pub fn row_to_spec(
    cols: &[Option<&str>],
    exts: &Extensions,
) -> Result<VassalSpec, (Option<VassalName>, RowError)> {
    let name = cols[0].ok_or((None, RowError::NullName))?;
    let name = VassalName::parse(name, exts, NamePolicy::Plain).map_err(|e| (None, e.into()))?;
    let fail = |e: RowError| (Some(name.clone()), e);
    let config = cols[1].ok_or_else(|| fail(RowError::NullConfig))?;
    check_config(config.as_bytes()).map_err(|e| fail(e.into()))?;
    let key = parse_ts(cols[2].ok_or_else(|| fail(RowError::NullTs))?).map_err(fail)?;
    let owner = if cols.len() >= 5 {
        parse_owner(cols[3], cols[4]).map_err(fail)?
    } else {
        None
    };
    // column 6 empty or NULL: no socket (the documented meaning)
    let socket = cols
        .get(5)
        .copied()
        .flatten()
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let mut spec = VassalSpec::inline(name, config, key);
    spec.owner = owner;
    spec.socket = socket;
    Ok(spec)
}

/// [`row_to_spec`] for a row laid out as `layout` says, with the limits
/// its limit columns set.
fn limited_row(
    row: &[Option<&str>],
    layout: &Layout,
    exts: &Extensions,
) -> Result<VassalSpec, (Option<VassalName>, RowError)> {
    let (cols, limits) = layout.split(row);
    let mut spec = row_to_spec(&cols, exts)?;
    spec.limits = limits
        .map_err(|e| (Some(spec.name.clone()), e))?
        .map(Box::new);
    Ok(spec)
}

/// Turns whole results into snapshots, remembering the last good spec of
/// each vassal and which bad rows were already reported.
#[derive(Debug, Default)]
pub struct RowReader {
    last_good: HashMap<VassalName, VassalSpec>,
    warned: WarnOnce<String>,
}

impl RowReader {
    /// The snapshot for one result. `rows` are the rows of a result whose
    /// columns are laid out as `layout` says; `source` names the monitor in
    /// log lines.
    pub fn snapshot(
        &mut self,
        rows: &[Vec<Option<&str>>],
        layout: &Layout,
        exts: &Extensions,
        source: &str,
    ) -> Vec<VassalSpec> {
        let mut specs: BTreeMap<VassalName, VassalSpec> = BTreeMap::new();
        let mut warnings: Vec<String> = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let n = i + 1;
            match limited_row(row, layout, exts) {
                Ok(spec) => match specs.get(&spec.name) {
                    Some(prev) => {
                        warnings.push(format!(
                            "row {n}: vassal {} appears more than once in the result; the row with the largest ts counts",
                            spec.name
                        ));
                        if spec.key.is_newer_than(&prev.key) {
                            specs.insert(spec.name.clone(), spec);
                        }
                    }
                    None => {
                        specs.insert(spec.name.clone(), spec);
                    }
                },
                Err((Some(name), e)) => {
                    let kept = self.last_good.get(&name);
                    warnings.push(match kept {
                        Some(_) => format!(
                            "row {n}: vassal {name} skipped: {e}; the vassal keeps its previous config"
                        ),
                        None => format!("row {n}: vassal {name} skipped: {e}"),
                    });
                    if let Some(old) = kept {
                        specs.entry(name).or_insert_with(|| old.clone());
                    }
                }
                Err((None, e)) => {
                    warnings.push(format!("row {n} skipped: {e}"));
                }
            }
        }
        // report each bad row once while it stays bad
        for w in warnings {
            if self.warned.is_new(w.clone()) {
                tracing::warn!(monitor = %source, "{w}");
            }
        }
        self.warned.end_pass();
        self.last_good = specs.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        specs.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emperor::ConfigSource;

    fn exts() -> Extensions {
        Extensions::default()
    }

    fn spec(cols: &[Option<&str>]) -> Result<VassalSpec, RowError> {
        row_to_spec(cols, &exts()).map_err(|(_, e)| e)
    }

    #[test]
    fn three_columns() {
        let s = spec(&[Some("a.ini"), Some("[uwsgi]\n"), Some("1700000000.5")]).unwrap();
        assert_eq!(s.name.as_str(), "a.ini");
        assert_eq!(s.config, ConfigSource::Inline("[uwsgi]\n".into()));
        assert_eq!(s.key, ChangeKey::Stamp(1_700_000_000_500_000_000));
        assert_eq!(s.owner, None);
        assert_eq!(s.socket, None);
    }

    #[test]
    fn owner_and_socket_columns() {
        let s = spec(&[
            Some("a.ini"),
            Some("x"),
            Some("1"),
            Some("1000"),
            Some("100"),
            Some("127.0.0.1:9000"),
        ])
        .unwrap();
        assert_eq!(
            s.owner,
            Some(Owner {
                uid: 1000,
                gid: 100
            })
        );
        assert_eq!(s.socket.as_deref(), Some("127.0.0.1:9000"));
        for empty in [Some(""), None] {
            let s = spec(&[Some("a.ini"), Some("x"), Some("1"), None, None, empty]).unwrap();
            assert_eq!(s.socket, None);
            assert_eq!(s.owner, None);
        }
    }

    #[test]
    fn bad_rows() {
        let big = "x".repeat(65536);
        let cases: Vec<(Vec<Option<&str>>, &str)> = vec![
            (vec![None, Some("x"), Some("1")], "NULL"),
            (vec![Some("a.txt"), Some("x"), Some("1")], "extension"),
            (
                vec![Some("../a.ini"), Some("x"), Some("1")],
                "path separator",
            ),
            (
                vec![Some("a/b.ini"), Some("x"), Some("1")],
                "path separator",
            ),
            (
                vec![Some("a.ini"), None, Some("1")],
                "config column is NULL",
            ),
            (vec![Some("a.ini"), Some(""), Some("1")], "empty"),
            (vec![Some("a.ini"), Some(&big), Some("1")], "65535"),
            (vec![Some("a.ini"), Some("x"), None], "ts column is NULL"),
            (
                vec![Some("a.ini"), Some("x"), Some("yesterday")],
                "not a number",
            ),
            (vec![Some("a.ini"), Some("x"), Some("-5")], "not a number"),
            (vec![Some("a.ini"), Some("x"), Some("NaN")], "not a number"),
            (
                vec![Some("a.ini"), Some("x"), Some("2024-01-01 25:00:00")],
                "not a number",
            ),
            (
                vec![Some("a.ini"), Some("x"), Some("1"), Some("root"), Some("0")],
                "uid/gid",
            ),
            (
                vec![Some("a.ini"), Some("x"), Some("1"), Some("0"), None],
                "uid/gid",
            ),
        ];
        for (row, want) in cases {
            let e = spec(&row).expect_err(want).to_string();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
    }

    #[test]
    fn largest_config_is_accepted() {
        let big = "x".repeat(65535);
        assert!(spec(&[Some("a.ini"), Some(&big), Some("1")]).is_ok());
    }

    #[test]
    fn ts_forms() {
        assert_eq!(parse_ts("12").unwrap(), ChangeKey::Stamp(12_000_000_000));
        // timestamp, timestamptz and date columns as PostgreSQL prints them
        assert_eq!(
            parse_ts("2023-11-14 22:13:20.25").unwrap(),
            ChangeKey::Stamp(1_700_000_000_250_000_000)
        );
        assert_eq!(
            parse_ts("2023-11-14 22:13:20+00").unwrap(),
            ChangeKey::Stamp(1_700_000_000_000_000_000)
        );
        assert_eq!(
            parse_ts("2023-11-15 03:43:20.5+05:30").unwrap(),
            ChangeKey::Stamp(1_700_000_000_500_000_000)
        );
        assert_eq!(
            parse_ts("2023-11-14").unwrap(),
            ChangeKey::Stamp(1_699_920_000_000_000_000)
        );
        assert!(parse_ts("2023-13-45").is_err());
        assert!(parse_ts("0044-03-15 BC").is_err());
        assert_eq!(parse_ts(" 1.25 ").unwrap(), ChangeKey::Stamp(1_250_000_000));
        assert_eq!(
            parse_ts("1e3").unwrap(),
            ChangeKey::Stamp(1_000_000_000_000)
        );
        // microseconds apart still compare in order
        let a = parse_ts("1700000000.000001").unwrap();
        let b = parse_ts("1700000000.000002").unwrap();
        assert!(b.is_newer_than(&a));
        for bad in [
            "",
            "inf",
            "-1",
            "0x10",
            ".5",
            "1,5",
            "1.2.3",
            "1e",
            "99999999999999999999999999999999",
        ] {
            assert!(parse_ts(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn column_counts() {
        assert!(check_columns(3).is_ok());
        assert!(check_columns(5).is_ok());
        assert!(check_columns(6).is_ok());
        assert_eq!(check_columns(2), Err(ResultError::ColumnCount(2)));
        assert_eq!(check_columns(7), Err(ResultError::ColumnCount(7)));
        assert_eq!(check_columns(4), Err(ResultError::UidWithoutGid));
    }

    #[test]
    fn limit_columns_are_found_by_name() {
        let l = Layout::of(&["name", "config", "ts", "memory_max", "CPU_MAX"]).unwrap();
        assert_eq!(l.limits, [(3, "memory-max"), (4, "cpu-max")]);
        let l = Layout::of(&["n", "c", "t", "u", "g", "s", "pids_max", "memory_high"]).unwrap();
        assert_eq!(l.limits, [(6, "pids-max"), (7, "memory-high")]);
        assert_eq!(
            Layout::of(&["n", "c", "t", "u", "g", "s", "x"]),
            Err(ResultError::ColumnCount(7))
        );
        assert_eq!(
            Layout::of(&["n", "c", "t", "u", "memory_max"]),
            Err(ResultError::UidWithoutGid)
        );
        assert_eq!(
            Layout::of(&["n", "c", "t", "memory_max", "memory_max"]),
            Err(ResultError::LimitTwice("memory_max".into()))
        );
    }

    #[test]
    fn limit_columns_set_the_spec_limits_and_a_bad_one_keeps_the_last_good() {
        let layout = Layout::of(&["memory_max", "name", "config", "ts", "cpu_max"]).unwrap();
        let mut r = RowReader::default();
        let rows = vec![
            vec![
                Some("64M"),
                Some("a.ini"),
                Some("A"),
                Some("1"),
                Some("0.5"),
            ],
            vec![None, Some("b.ini"), Some("B"), Some("1"), Some(" ")],
        ];
        let snap = r.snapshot(&rows, &layout, &exts(), "test");
        let a = snap.iter().find(|s| s.name.as_str() == "a.ini").unwrap();
        let limits = a.limits.as_deref().unwrap();
        assert_eq!(limits.memory_max, Some(64 << 20));
        assert_eq!(limits.cpu_max, Some(0.5));
        assert_eq!(limits.pids_max, None);
        assert_eq!(a.config, ConfigSource::Inline("A".into()));
        let b = snap.iter().find(|s| s.name.as_str() == "b.ini").unwrap();
        assert_eq!(b.limits, None, "NULL and blank set nothing");
        let bad = vec![vec![
            Some("lots"),
            Some("a.ini"),
            Some("A2"),
            Some("2"),
            None,
        ]];
        let snap = r.snapshot(&bad, &layout, &exts(), "test");
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].config, ConfigSource::Inline("A".into()), "kept");
        let e = limited_row(&bad[0], &layout, &exts()).unwrap_err();
        assert_eq!(e.0.unwrap().as_str(), "a.ini");
        assert!(
            e.1.to_string().starts_with("the memory_max column: "),
            "{}",
            e.1
        );
    }

    #[test]
    fn bad_rows_are_skipped_and_the_rest_counts() {
        let mut r = RowReader::default();
        let rows = vec![
            vec![Some("a.ini"), Some("A"), Some("1")],
            vec![Some("../evil.ini"), Some("E"), Some("1")],
            vec![None, Some("N"), Some("1")],
            vec![Some("b.ini"), Some("B"), Some("soon")],
            vec![Some("c.ini"), Some("C"), Some("3")],
        ];
        let snap = r.snapshot(&rows, &Layout::default(), &exts(), "test");
        let names: Vec<&str> = snap.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a.ini", "c.ini"]);
    }

    #[test]
    fn a_bad_edit_keeps_the_previous_spec() {
        let mut r = RowReader::default();
        let good = vec![vec![Some("a.ini"), Some("A1"), Some("1")]];
        let first = r.snapshot(&good, &Layout::default(), &exts(), "test");
        let big = "x".repeat(70_000);
        let bad = vec![vec![Some("a.ini"), Some(big.as_str()), Some("2")]];
        let second = r.snapshot(&bad, &Layout::default(), &exts(), "test");
        assert_eq!(first, second);
        // a later good edit is taken
        let fixed = vec![vec![Some("a.ini"), Some("A3"), Some("3")]];
        let third = r.snapshot(&fixed, &Layout::default(), &exts(), "test");
        assert_eq!(third[0].config, ConfigSource::Inline("A3".into()));
        // once the row is gone, a bad row of that name is not kept any more
        r.snapshot(&[], &Layout::default(), &exts(), "test");
        assert!(r
            .snapshot(&bad, &Layout::default(), &exts(), "test")
            .is_empty());
    }

    #[test]
    fn duplicate_names_keep_the_largest_ts() {
        let mut r = RowReader::default();
        let rows = vec![
            vec![Some("a.ini"), Some("old"), Some("1")],
            vec![Some("a.ini"), Some("new"), Some("5")],
            vec![Some("a.ini"), Some("mid"), Some("3")],
        ];
        let snap = r.snapshot(&rows, &Layout::default(), &exts(), "test");
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].config, ConfigSource::Inline("new".into()));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// `EXTRACT(epoch FROM ts)` prints seconds and up to 9 digits of
            /// fraction: read exactly, to the nanosecond, whatever the
            /// number of fraction digits and the blanks around it.
            #[test]
            fn parse_ts_reads_any_decimal_exactly(
                secs in any::<u64>(),
                nanos in 0u32..1_000_000_000,
                digits in 0usize..=9,
                pad in "[ \t]{0,2}",
            ) {
                let frac = format!("{nanos:09}");
                let frac = &frac[..digits];
                let text = if digits == 0 { format!("{pad}{secs}{pad}") } else { format!("{pad}{secs}.{frac}{pad}") };
                let ns_part: i128 = if digits == 0 { 0 } else { frac.parse::<i128>().unwrap() * 10i128.pow(9 - digits as u32) };
                let want = i128::from(secs) * 1_000_000_000 + ns_part;
                prop_assert_eq!(parse_ts(&text), Ok(ChangeKey::Stamp(want)));
            }
        }
    }
}
