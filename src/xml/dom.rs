//! A small element tree over quick-xml: enough to read and write the backup
//! and domain documents, which are small and element-oriented (no mixed content).

use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
}

impl Element {
    pub fn new(name: &str) -> Self {
        Element {
            name: name.to_string(),
            ..Default::default()
        }
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The trimmed text of a direct child element, if present.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }

    pub fn with_attr(mut self, name: &str, value: impl Into<String>) -> Self {
        self.attrs.push((name.to_string(), value.into()));
        self
    }

    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = text.into();
        self
    }

    pub fn with_child(mut self, child: Element) -> Self {
        self.children.push(child);
        self
    }

    pub fn push(&mut self, child: Element) {
        self.children.push(child);
    }

    /// Serialize with two-space indentation and a trailing newline, as libvirt does.
    pub fn to_xml(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out
    }

    fn write(&self, out: &mut String, depth: usize) {
        let indent = "  ".repeat(depth);
        out.push_str(&indent);
        out.push('<');
        out.push_str(&self.name);
        for (k, v) in &self.attrs {
            out.push(' ');
            out.push_str(k);
            out.push_str("='");
            out.push_str(&escape(v));
            out.push('\'');
        }
        if self.children.is_empty() && self.text.is_empty() {
            out.push_str("/>\n");
            return;
        }
        out.push('>');
        if self.children.is_empty() {
            out.push_str(&escape(&self.text));
        } else {
            out.push('\n');
            for c in &self.children {
                c.write(out, depth + 1);
            }
            out.push_str(&indent);
        }
        out.push_str("</");
        out.push_str(&self.name);
        out.push_str(">\n");
    }
}

/// Escape text and attribute values (attributes are written with single quotes).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

fn start_element(e: &BytesStart<'_>) -> Result<Element> {
    let name = e.name().as_ref().to_string();
    let mut el = Element::new(&name);
    for a in e.attributes() {
        let a = a.map_err(|err| Error::xml(format!("bad attribute in <{name}>: {err}")))?;
        let key = a.key.as_ref().to_string();
        let value = a
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|err| Error::xml(format!("bad value of attribute '{key}': {err}")))?
            .into_owned();
        el.attrs.push((key, value));
    }
    Ok(el)
}

fn resolve_entity(name: &str) -> Option<char> {
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        _ => return None,
    })
}

/// Parse a whole document and return its root element.
pub fn parse(xml: &str) -> Result<Element> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let ev = reader.read_event().map_err(|e| {
            Error::xml(format!(
                "malformed document at byte {}: {e}",
                reader.buffer_position()
            ))
        })?;
        match ev {
            Event::Start(e) => {
                if root.is_some() {
                    return Err(Error::xml("extra content after the root element"));
                }
                stack.push(start_element(&e)?);
            }
            Event::Empty(e) => {
                let el = start_element(&e)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None if root.is_none() => root = Some(el),
                    None => return Err(Error::xml("extra content after the root element")),
                }
            }
            Event::End(e) => {
                let el = stack
                    .pop()
                    .ok_or_else(|| Error::xml("unexpected closing tag"))?;
                if e.name().as_ref() != el.name {
                    return Err(Error::xml(format!(
                        "mismatched closing tag for <{}>",
                        el.name
                    )));
                }
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                let text = t.xml10_content();
                match stack.last_mut() {
                    Some(el) => el.text.push_str(&text),
                    None if text.trim().is_empty() => {}
                    None => return Err(Error::xml("text outside the root element")),
                }
            }
            Event::CData(c) => {
                let text = c.into_inner();
                match stack.last_mut() {
                    Some(el) => el.text.push_str(&text),
                    None => return Err(Error::xml("text outside the root element")),
                }
            }
            Event::GeneralRef(r) => {
                let ch = match r.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    Ok(None) => {
                        let name: &str = r.as_ref();
                        resolve_entity(name)
                            .ok_or_else(|| Error::xml(format!("unknown entity '&{name};'")))?
                    }
                    Err(e) => return Err(Error::xml(format!("bad character reference: {e}"))),
                };
                match stack.last_mut() {
                    Some(el) => el.text.push(ch),
                    None => return Err(Error::xml("text outside the root element")),
                }
            }
            Event::Eof => break,
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(Error::xml(format!(
            "unterminated element <{}>",
            stack[stack.len() - 1].name
        )));
    }
    root.ok_or_else(|| Error::xml("empty document"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_escapes() {
        let el = Element::new("a")
            .with_attr("x", "1 & 'two' <3>")
            .with_child(Element::new("b").with_text("x < y & \"z\""));
        let back = parse(&el.to_xml()).unwrap();
        assert_eq!(back.attr("x"), Some("1 & 'two' <3>"));
        assert_eq!(back.child_text("b"), Some("x < y & \"z\""));
    }

    #[test]
    fn malformed_documents_are_refused() {
        for bad in [
            "",
            "<a>",
            "<a></b>",
            "<a/><b/>",
            "<a x='1' x='2'/>",
            "<a>&nope;</a>",
            "junk",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.is(crate::error::ErrorCode::XmlError), "{bad}: {err:?}");
        }
    }

    #[test]
    fn char_refs_and_cdata() {
        let el = parse("<a>&#65;<![CDATA[<b>]]></a>").unwrap();
        assert_eq!(el.text, "A<b>");
    }
}
