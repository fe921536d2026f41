//! uWSGI's XML reader, as built by Debian (core/xmlconf.c with libxml2).
//!
//! `quick-xml` reads the events; a tiny tree keeps what libxml2's tree has
//! and uWSGI looks at: element names, attributes, and child nodes in order
//! (text, CDATA and comments kept apart, since uWSGI treats a CDATA child of
//! `<uwsgi>` as `eval` and uses a comment's text if it is an option's first
//! child). Adjacent text and entity references merge into one text node, as
//! libxml2 does.

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::ini::RawEntry;
use crate::magic::Substituted;

#[derive(Debug)]
enum Node {
    Element(Element),
    Text(String),
    CData(String),
    Comment(String),
    Other,
}

#[derive(Debug)]
struct Element {
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<Node>,
    line: usize,
}

impl Element {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Node {
    /// libxml2's `node->content`: text of text/CDATA/comment nodes, none for elements.
    fn content(&self) -> Option<&str> {
        match self {
            Node::Text(s) | Node::CData(s) | Node::Comment(s) => Some(s),
            _ => None,
        }
    }
}

type Err = (Option<usize>, String);

#[allow(
    clippy::too_many_lines,
    reason = "a single walk over quick-xml's events, as uWSGI's reader walks libxml2's"
)]
fn build(sub: &Substituted) -> Result<Element, Err> {
    let text = std::str::from_utf8(&sub.text)
        .map_err(|_| (None, "[uWSGI] could not parse file (not UTF-8)".to_string()))?;
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let fail = |pos: u64, msg: String| -> Err {
        (
            Some(sub.source_line_of_offset(pos as usize)),
            format!("[uWSGI] could not parse file: {msg}"),
        )
    };
    loop {
        let pos = reader.buffer_position();
        let ev = reader
            .read_event()
            .map_err(|e| fail(reader.error_position(), e.to_string()))?;
        let line = sub.source_line_of_offset(pos as usize);
        let push_text = |stack: &mut Vec<Element>, s: String| -> Result<(), Err> {
            match stack.last_mut() {
                Some(el) => {
                    if let Some(Node::Text(t)) = el.children.last_mut() {
                        t.push_str(&s);
                    } else {
                        el.children.push(Node::Text(s));
                    }
                    Ok(())
                }
                None if s.trim().is_empty() => Ok(()),
                None => Err(fail(pos, "text outside the root element".into())),
            }
        };
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                if root.is_some() && stack.is_empty() {
                    return Err(fail(pos, "extra content at the end of the document".into()));
                }
                let mut attrs = Vec::new();
                for a in e.attributes() {
                    let a = a.map_err(|err| fail(pos, err.to_string()))?;
                    let v = a
                        .unescape_value()
                        .map_err(|err| fail(pos, err.to_string()))?;
                    attrs.push((
                        String::from_utf8_lossy(a.key.as_ref()).into_owned(),
                        v.into_owned(),
                    ));
                }
                let el = Element {
                    name: String::from_utf8_lossy(e.name().as_ref()).into_owned(),
                    attrs,
                    children: Vec::new(),
                    line,
                };
                if matches!(ev, Event::Start(_)) {
                    stack.push(el);
                } else if let Some(parent) = stack.last_mut() {
                    parent.children.push(Node::Element(el));
                } else {
                    root = Some(el);
                }
            }
            Event::End(_) => {
                let el = stack
                    .pop()
                    .ok_or_else(|| fail(pos, "unexpected end tag".into()))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(el)),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                let s = t
                    .decode()
                    .map_err(|e| fail(pos, e.to_string()))?
                    .into_owned();
                push_text(&mut stack, s)?;
            }
            Event::GeneralRef(r) => {
                let s =
                    if let Some(c) = r.resolve_char_ref().map_err(|e| fail(pos, e.to_string()))? {
                        c.to_string()
                    } else {
                        let name = r.decode().map_err(|e| fail(pos, e.to_string()))?;
                        match quick_xml::escape::resolve_predefined_entity(&name) {
                            Some(v) => v.to_string(),
                            None => return Err(fail(pos, format!("Entity '{name}' not defined"))),
                        }
                    };
                push_text(&mut stack, s)?;
            }
            Event::CData(c) => {
                let s = String::from_utf8_lossy(&c.into_inner()).into_owned();
                match stack.last_mut() {
                    Some(el) => el.children.push(Node::CData(s)),
                    None => return Err(fail(pos, "CDATA outside the root element".into())),
                }
            }
            Event::Comment(c) => {
                let s = String::from_utf8_lossy(&c.into_inner()).into_owned();
                if let Some(el) = stack.last_mut() {
                    el.children.push(Node::Comment(s));
                }
            }
            Event::PI(_) => {
                if let Some(el) = stack.last_mut() {
                    el.children.push(Node::Other);
                }
            }
            Event::Decl(_) | Event::DocType(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err((
            None,
            "[uWSGI] could not parse file: premature end of data".into(),
        ));
    }
    root.ok_or_else(|| (None, "[uWSGI] could not parse file: no root element".into()))
}

/// The entries of the `<uwsgi>` element (with `id` = `id` when given).
///
/// uWSGI's rules: if the root element is `<uwsgi>` it is used whatever its
/// `id`; otherwise the first `<uwsgi>` child of the root whose `id` matches
/// (or that has no `id`). In it, child elements with an `id` other than the
/// asked one are skipped; an element's value is its first child's text
/// (not trimmed), `1` if it has no children; `<app>` becomes `mount` + `app`;
/// a CDATA child becomes `eval`.
pub(crate) fn parse(sub: &Substituted, id: Option<&str>) -> Result<Vec<RawEntry>, Err> {
    let root = build(sub)?;
    let element = if root.name == "uwsgi" {
        &root
    } else {
        root.children
            .iter()
            .find_map(|n| match n {
                Node::Element(e) if e.name == "uwsgi" => match (id, e.attr("id")) {
                    (Some(want), Some(have)) if want != have => None,
                    _ => Some(e),
                },
                _ => None,
            })
            .ok_or((
                Some(root.line),
                "[uWSGI] invalid xml root element, <uwsgi> expected.".to_string(),
            ))?
    };
    let mut out = Vec::new();
    let mut push = |key: &str, value: String, line: usize| {
        out.push(RawEntry {
            key: key.to_string(),
            value,
            line,
        })
    };
    for node in &element.children {
        match node {
            Node::CData(s) => push("eval", s.clone(), element.line),
            Node::Element(e) => {
                if let (Some(want), Some(have)) = (id, e.attr("id")) {
                    if want != have {
                        continue;
                    }
                }
                if e.name == "app" {
                    let text = match e.children.as_slice() {
                        [] => {
                            push("app", String::new(), e.line);
                            continue;
                        }
                        [only] => only.content().map(str::to_string),
                        [_, Node::Element(second), ..] => second
                            .children
                            .first()
                            .and_then(|c| c.content())
                            .map(str::to_string),
                        _ => None,
                    };
                    if let Some(mut v) = text {
                        if let Some(mp) = e.attr("mountpoint") {
                            v = format!("{mp}={v}");
                        } else if let Some(domain) = e.attr("domain") {
                            v = format!("{domain}|={v}");
                        }
                        push("mount", v, e.line);
                        push("app", String::new(), e.line);
                    }
                } else {
                    match e.children.first() {
                        None => push(&e.name, "1".into(), e.line),
                        Some(first) => match first.content() {
                            Some(c) => push(&e.name, c.to_string(), e.line),
                            // uWSGI does strdup(NULL) here and crashes
                            None => {
                                return Err((
                                    Some(e.line),
                                    format!("<{}> starts with a child element; uWSGI 2.0.21 crashes on this", e.name),
                                ))
                            }
                        },
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::magic::{substitute, MagicTable};

    fn run(s: &str, id: Option<&str>) -> Result<Vec<(String, String)>, String> {
        let sub = substitute(s.as_bytes(), &MagicTable::new(), false);
        parse(&sub, id)
            .map(|v| v.into_iter().map(|e| (e.key, e.value)).collect())
            .map_err(|e| e.1)
    }

    fn kv(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn elements_attributes_app_cdata() {
        let doc = "<?xml version=\"1.0\"?>\n<uwsgi>\n  <socket>:3031</socket>\n  <master/>\n  <sp> a &amp; b </sp>\n  <pp id=\"other\">no</pp>\n  <!-- c -->\n  <app mountpoint=\"/x\">\n    <script>mymod</script>\n  </app>\n  <c><![CDATA[cd]]></c>\n  <e></e>\n<![CDATA[code]]></uwsgi>\n";
        assert_eq!(
            run(doc, None).unwrap(),
            kv(&[
                ("socket", ":3031"),
                ("master", "1"),
                ("sp", " a & b "),
                ("pp", "no"),
                ("mount", "/x=mymod"),
                ("app", ""),
                ("c", "cd"),
                ("e", "1"),
                ("eval", "code")
            ])
        );
        assert_eq!(run(doc, Some("x")).unwrap().len(), 8);
    }

    #[test]
    fn ids() {
        let doc = "<all>\n <uwsgi id=\"one\"><a>1</a></uwsgi>\n <uwsgi id=\"two\"><a>2</a></uwsgi>\n</all>";
        assert_eq!(run(doc, Some("two")).unwrap(), kv(&[("a", "2")]));
        assert_eq!(run(doc, None).unwrap(), kv(&[("a", "1")]));
        assert!(run(doc, Some("three"))
            .unwrap_err()
            .contains("<uwsgi> expected"));
    }

    #[test]
    fn errors() {
        assert!(run("<uwsgi><a>1</b></uwsgi>", None).is_err());
        assert!(run("<uwsgi><a>&nope;</a></uwsgi>", None).is_err());
        assert!(run("<uwsgi><a><b>1</b></a></uwsgi>", None)
            .unwrap_err()
            .contains("crashes"));
        assert!(run("<uwsgi>", None).is_err());
    }
}
