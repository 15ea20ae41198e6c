//! The writer: an element tree as text, indented as libvirt writes its
//! documents, in which every attribute value and text reads back exactly
//! as it is in the tree (or is refused, when XML 1.0 cannot carry it).

use super::Element;
use super::chars::is_xml_char;
use crate::error::{Error, Result};

impl Element {
    /// Serialize with two-space indentation and a trailing newline, as libvirt does.
    /// Iterative (an explicit stack of open elements), like [`Drop`].
    ///
    /// Every attribute value and text reads back exactly as it is here
    /// (see [`escape_attr`] and [`escape_text`]); a value holding a
    /// character XML 1.0 cannot carry at all (NUL, the other C0 controls
    /// but tab, line feed and carriage return, U+FFFE, U+FFFF) is refused
    /// with an error naming it, rather than written as something else.
    pub fn to_xml(&self) -> Result<String> {
        let mut out = String::new();
        // (element, index of the next child to write)
        let mut stack: Vec<(&Element, usize)> = Vec::new();
        self.write_start(&mut out, 0)?;
        if !self.children.is_empty() {
            stack.push((self, 0));
        }
        while let Some(&(el, i)) = stack.last() {
            let depth = stack.len();
            match el.children.get(i) {
                Some(c) => {
                    if let Some(top) = stack.last_mut() {
                        top.1 += 1;
                    }
                    c.write_start(&mut out, depth)?;
                    if !c.children.is_empty() {
                        stack.push((c, 0));
                    }
                }
                None => {
                    stack.pop();
                    out.push_str(&"  ".repeat(depth - 1));
                    el.write_end(&mut out);
                }
            }
        }
        Ok(out)
    }

    /// The start tag, and for an element without children the whole element.
    fn write_start(&self, out: &mut String, depth: usize) -> Result<()> {
        out.push_str(&"  ".repeat(depth));
        out.push('<');
        out.push_str(&self.name);
        for (k, v) in &self.attrs {
            out.push(' ');
            out.push_str(k);
            out.push_str("='");
            out.push_str(
                &escape_attr(v).map_err(|c| {
                    unwritable(c, &format!("attribute '{k}' of <{}>", self.name), v)
                })?,
            );
            out.push('\'');
        }
        if self.children.is_empty() && self.text.is_empty() {
            out.push_str("/>\n");
        } else if self.children.is_empty() {
            out.push('>');
            out.push_str(
                &escape_text(&self.text).map_err(|c| {
                    unwritable(c, &format!("the text of <{}>", self.name), &self.text)
                })?,
            );
            self.write_end(out);
        } else {
            out.push_str(">\n");
        }
        Ok(())
    }

    fn write_end(&self, out: &mut String) {
        out.push_str("</");
        out.push_str(&self.name);
        out.push_str(">\n");
    }
}

/// The error for a value holding `c`, which no XML 1.0 document can carry.
fn unwritable(c: char, what: &str, value: &str) -> Error {
    Error::invalid_arg(format!(
        "{what} cannot be written as XML: the value \"{}\" holds character U+{:04X}, \
         which XML 1.0 cannot carry",
        value.escape_debug(),
        c as u32
    ))
}

/// `s` as an attribute value (written between single quotes) that every XML
/// 1.0 reader reads back as `s`: the markup characters as entities, and tab,
/// line feed and carriage return as character references, since a reader
/// turns them into spaces in an attribute value (attribute-value
/// normalization), which would make a path holding one another path.
/// Err: the first character XML 1.0 cannot carry at all.
pub fn escape_attr(s: &str) -> std::result::Result<String, char> {
    escape(s, true)
}

/// `s` as element text that every XML 1.0 reader reads back as `s`: the
/// markup characters as entities (`>` too, so that `]]>` never appears),
/// and carriage return as a character reference, since a reader turns a
/// literal one (alone or before a line feed) into a line feed.
/// Err: the first character XML 1.0 cannot carry at all.
pub fn escape_text(s: &str) -> std::result::Result<String, char> {
    escape(s, false)
}

fn escape(s: &str, attr: bool) -> std::result::Result<String, char> {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            '\r' => out.push_str("&#13;"),
            '\t' if attr => out.push_str("&#9;"),
            '\n' if attr => out.push_str("&#10;"),
            c if !is_xml_char(c) => return Err(c),
            c => out.push(c),
        }
    }
    Ok(out)
}
