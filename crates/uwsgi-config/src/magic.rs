//! Magic variables (`%d`, `%p`, ...): uWSGI substitutes them in the raw text
//! of every config file before parsing it (`magic_sub` in core/utils.c).

/// uWSGI's 256-slot magic table. Every slot starts as the empty string, so
/// `%z` (an unassigned letter) becomes nothing, and `%` followed by a newline
/// eats the newline (uWSGI does exactly that: `a = 50%` joins the next line).
#[derive(Debug, Clone)]
pub(crate) struct MagicTable {
    slots: Vec<String>,
}

impl MagicTable {
    pub(crate) fn new() -> Self {
        let mut slots = vec![String::new(); 256];
        slots[b'%' as usize] = "%".into();
        slots[b'(' as usize] = "%(".into();
        MagicTable { slots }
    }

    pub(crate) fn set(&mut self, c: u8, v: impl Into<String>) {
        self.slots[c as usize] = v.into();
    }

    pub(crate) fn get(&self, c: u8) -> &str {
        &self.slots[c as usize]
    }
}

/// The substituted text, and for each of its lines the source line it comes
/// from (1-based), so origins point at the file as written.
pub(crate) struct Substituted {
    pub(crate) text: Vec<u8>,
    line_map: Vec<usize>,
}

impl Substituted {
    /// The source line of output line `out_line` (1-based).
    pub(crate) fn source_line(&self, out_line: usize) -> usize {
        self.line_map
            .get(out_line.saturating_sub(1))
            .copied()
            .unwrap_or(out_line)
    }

    /// The source line of a byte offset in the output.
    pub(crate) fn source_line_of_offset(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        let out_line = 1 + self.text[..end].iter().filter(|&&b| b == b'\n').count();
        self.source_line(out_line)
    }
}

/// `magic_sub`: `%X` becomes the table's slot for byte X. `add_zero` mirrors
/// uWSGI reading ini/yaml/json with a trailing NUL: a `%` as the very last
/// byte then swallows that NUL and disappears; for XML it stays.
pub(crate) fn substitute(input: &[u8], table: &MagicTable, add_zero: bool) -> Substituted {
    let mut text = Vec::with_capacity(input.len());
    let mut line_map = vec![1usize];
    let mut src_line = 1usize;
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'%' && i + 1 < input.len() {
            let next = input[i + 1];
            if next == b'\n' {
                src_line += 1;
            }
            let v = table.get(next).as_bytes();
            for &vb in v {
                text.push(vb);
                if vb == b'\n' {
                    line_map.push(src_line);
                }
            }
            i += 2;
            continue;
        }
        if b == b'%' && add_zero {
            // the NUL uWSGI appends is eaten, with the '%'
            i += 1;
            continue;
        }
        text.push(b);
        if b == b'\n' {
            src_line += 1;
            line_map.push(src_line);
        }
        i += 1;
    }
    Substituted { text, line_map }
}

/// `djb33x_hash` over the bytes (C `char` is signed on the platforms uWSGI
/// runs on), printed as its 4 bytes in memory order, upper-case hex: `%j`.
pub(crate) fn djb33x_hex(s: &str) -> String {
    let mut h: u32 = 5381;
    for &b in s.as_bytes() {
        h = (h << 5).wrapping_add(h) ^ (b as i8 as i32 as u32);
    }
    h.to_le_bytes().iter().map(|b| format!("{b:02X}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_letter_is_empty_and_percent_newline_joins() {
        let mut t = MagicTable::new();
        t.set(b'd', "/x/");
        let s = substitute(b"a=%d%z\nb=50%\nc=1%%\n", &t, true);
        assert_eq!(
            String::from_utf8(s.text.clone()).unwrap(),
            "a=/x/\nb=50c=1%\n"
        );
        // output line 2 ("b=50c=1%") starts at source line 2
        assert_eq!(s.source_line(2), 2);
        assert_eq!(s.source_line(3), 4);
    }

    #[test]
    fn trailing_percent_depends_on_add_zero() {
        let t = MagicTable::new();
        assert_eq!(substitute(b"a%", &t, true).text, b"a");
        assert_eq!(substitute(b"a%", &t, false).text, b"a%");
        assert_eq!(substitute(b"%(x)", &t, true).text, b"%(x)");
    }

    #[test]
    fn hash_matches_uwsgi() {
        // observed with uwsgi 2.0.21: %j of /tmp/uexp/a.ini
        assert_eq!(djb33x_hex("/tmp/uexp/a.ini"), "DAA97DD9");
    }
}
