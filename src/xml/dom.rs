//! A small element tree over quick-xml: enough to read and write the backup
//! and domain documents, which are small and element-oriented (no mixed content).
//!
//! The parser is the library's only way into XML, and the library runs inside
//! long-lived management daemons, so it never trusts a document: it accepts
//! only well-formed XML 1.0 (plus namespace well-formedness), refuses DOCTYPEs
//! and so every entity but the five predefined ones and character references,
//! bounds size, depth and element count, and never recurses over the input
//! (parsing keeps an explicit stack; dropping a tree is iterative).
//! quick-xml checks end names, comments and dangling `&`; the rest
//! (names, attributes, characters, the declaration, document structure) is
//! checked here.
//!
//! Here: the tree ([`Element`]) and the parser. The writer (an element as
//! text that reads back exactly) is `write.rs`; the bounds and vocabularies
//! a document is read against ([`Limits`], [`Schema`]) are `schema.rs`; the
//! character classes and references of XML 1.0 both check are `chars.rs`.

use quick_xml::Reader;
use quick_xml::events::{BytesCData, BytesPI, BytesRef, BytesStart, BytesText, Event};

use crate::error::{Error, Result};

mod chars;
mod schema;
pub mod write;

use chars::{
    bad_char, char_ref, is_blank, is_ncname, is_space, is_xml_char, predefined_entity,
    qname_prefix, reference,
};
pub use schema::{Limits, Schema};

/// An XML element: its name, attributes, child elements and text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Element {
    /// The element's name.
    pub name: String,
    /// Its attributes, name and value, in document order.
    pub attrs: Vec<(String, String)>,
    /// Its child elements, in document order.
    pub children: Vec<Element>,
    /// Its text (the documents have no mixed content).
    pub text: String,
}

/// Dropping a tree takes its descendants one level at a time into a flat
/// list, so a deep tree cannot exhaust the stack the way the compiler's
/// recursive drop glue would.
impl Drop for Element {
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.children);
        while let Some(mut el) = pending.pop() {
            pending.append(&mut el.children);
        }
    }
}

impl Element {
    /// An element named `name`, empty.
    pub fn new(name: &str) -> Self {
        Element {
            name: name.to_string(),
            attrs: Vec::new(),
            children: Vec::new(),
            text: String::new(),
        }
    }

    /// The value of attribute `name`, if present.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first child element named `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The child elements named `name`, in order.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The trimmed text of a direct child element, if present.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }

    /// Add an attribute.
    pub fn with_attr(mut self, name: &str, value: impl Into<String>) -> Self {
        self.attrs.push((name.to_string(), value.into()));
        self
    }

    /// Set the text.
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = text.into();
        self
    }

    /// Add a child element.
    pub fn with_child(mut self, child: Element) -> Self {
        self.children.push(child);
        self
    }

    /// Add a child element in place.
    pub fn push(&mut self, child: Element) {
        self.children.push(child);
    }
}

/// Parse a document written by libvirt (or the catalog): well-formed and
/// bounded by [`Limits::LIBVIRT`], any elements.
pub fn parse(xml: &str) -> Result<Element> {
    parse_with(xml, &Limits::LIBVIRT, None)
}

/// Parse one of the library's own documents: bounded by
/// [`Limits::DOCUMENT`] and valid against `schema` (its root included).
pub fn parse_document(xml: &str, schema: &'static Schema) -> Result<Element> {
    parse_with(xml, &Limits::DOCUMENT, Some(schema))
}

/// 1-based line and column (in characters) of byte `pos` of `xml`.
fn line_col(xml: &str, pos: usize) -> (usize, usize) {
    let mut pos = pos.min(xml.len());
    while !xml.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &xml[..pos];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

fn error_at(xml: &str, pos: usize, msg: impl std::fmt::Display) -> Error {
    let (line, col) = line_col(xml, pos);
    Error::xml(format!("line {line}, column {col}: {msg}"))
}

/// The attributes of a start tag (`raw`: what follows the element name),
/// parsed and normalized as XML 1.0 requires for CDATA attributes.
/// Errors carry the byte offset in `raw`.
fn parse_attrs(raw: &str) -> std::result::Result<Vec<(String, String)>, (usize, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    // A set, not a search of `out`: a tag may have many attributes.
    let mut seen = std::collections::HashSet::new();
    let mut i = 0;
    let b = raw.as_bytes();
    loop {
        let ws_start = i;
        while i < b.len() && is_space(b[i] as char) {
            i += 1;
        }
        if i == b.len() {
            return Ok(out);
        }
        if i == ws_start {
            return Err((i, "attributes must be separated by whitespace".into()));
        }
        let name_start = i;
        while i < b.len() && !is_space(b[i] as char) && b[i] != b'=' {
            i += 1;
        }
        let name = &raw[name_start..i];
        if qname_prefix(name).is_err() {
            return Err((name_start, format!("invalid attribute name '{name}'")));
        }
        while i < b.len() && is_space(b[i] as char) {
            i += 1;
        }
        if i == b.len() || b[i] != b'=' {
            return Err((
                i,
                format!("attribute '{name}' needs '=' and a quoted value"),
            ));
        }
        i += 1;
        while i < b.len() && is_space(b[i] as char) {
            i += 1;
        }
        let quote = match b.get(i) {
            Some(&q @ (b'\'' | b'"')) => q,
            _ => return Err((i, format!("the value of attribute '{name}' must be quoted"))),
        };
        i += 1;
        let value_start = i;
        let Some(len) = raw[i..].find(quote as char) else {
            return Err((
                value_start,
                format!("unterminated value of attribute '{name}'"),
            ));
        };
        let value = &raw[value_start..value_start + len];
        i = value_start + len + 1;
        if !seen.insert(name) {
            return Err((name_start, format!("duplicate attribute '{name}'")));
        }
        out.push((
            name.to_string(),
            attr_value(value).map_err(|(o, m)| (value_start + o, m))?,
        ));
    }
}

/// Decode references and normalize white space of an attribute value.
fn attr_value(v: &str) -> std::result::Result<String, (usize, String)> {
    let mut out = String::with_capacity(v.len());
    let mut rest = v.char_indices().peekable();
    while let Some((i, c)) = rest.next() {
        match c {
            '<' => return Err((i, "'<' is not allowed in an attribute value".into())),
            '&' => {
                let (ch, used) = reference(&v[i + 1..]).map_err(|m| (i, m))?;
                out.push(ch);
                while rest.peek().is_some_and(|&(j, _)| j < i + 1 + used) {
                    rest.next();
                }
            }
            '\r' => {
                // A CR LF pair is one line end, hence one space.
                if rest.peek().is_some_and(|&(_, n)| n == '\n') {
                    rest.next();
                }
                out.push(' ');
            }
            '\t' | '\n' => out.push(' '),
            c if !is_xml_char(c) => {
                return Err((
                    i,
                    format!("character U+{:04X} is not allowed in XML", c as u32),
                ));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The XML declaration `<?xml version='1.0' encoding='UTF-8' standalone='yes'?>`:
/// version 1.0 only, UTF-8 only (the library gets strings, already decoded).
fn check_decl(body: &str) -> std::result::Result<(), (usize, String)> {
    let attrs = parse_attrs(body)?;
    let names: Vec<&str> = attrs.iter().map(|(k, _)| k.as_str()).collect();
    let order_ok = matches!(
        names.as_slice(),
        ["version"]
            | ["version", "encoding"]
            | ["version", "standalone"]
            | ["version", "encoding", "standalone"]
    );
    if !order_ok {
        return Err((
            0,
            "the XML declaration needs version, then optionally encoding and standalone".into(),
        ));
    }
    for (k, v) in &attrs {
        let ok = match k.as_str() {
            "version" => v == "1.0",
            "encoding" => v.eq_ignore_ascii_case("utf-8"),
            _ => v == "yes" || v == "no",
        };
        if !ok {
            let why = match k.as_str() {
                "version" => "only XML version 1.0 is supported".to_string(),
                "encoding" => format!("encoding '{v}' is not supported: documents must be UTF-8"),
                _ => format!("standalone='{v}' must be yes or no"),
            };
            return Err((0, why));
        }
    }
    Ok(())
}

/// The namespace prefixes in scope: declarations in order (to leave an
/// element's scope) and counted by prefix (to look one up in constant time).
#[derive(Default)]
struct Namespaces {
    order: Vec<String>,
    count: std::collections::HashMap<String, usize>,
}

impl Namespaces {
    fn len(&self) -> usize {
        self.order.len()
    }

    fn declare(&mut self, prefix: &str) {
        self.order.push(prefix.to_string());
        *self.count.entry(prefix.to_string()).or_default() += 1;
    }

    fn in_scope(&self, prefix: &str) -> bool {
        self.count.get(prefix).is_some_and(|&n| n > 0)
    }

    /// Forget the declarations made after the first `len`.
    fn restore(&mut self, len: usize) {
        while self.order.len() > len {
            if let Some(p) = self.order.pop()
                && let Some(n) = self.count.get_mut(&p)
            {
                *n -= 1;
            }
        }
    }
}

/// An element being read.
struct Open {
    el: Element,
    /// Where its start tag is, for errors about it.
    pos: usize,
    schema: Option<&'static Schema>,
    /// Which of the schema's children have appeared (at most 64 kinds).
    seen: u64,
    /// Namespace prefixes in scope before this element.
    ns_len: usize,
}

/// What a start tag (`e`, at byte `pos`) makes, checked against the
/// document so far.
struct StartCheck<'a> {
    xml: &'a str,
    ns: &'a mut Namespaces,
}

impl StartCheck<'_> {
    fn element(&mut self, e: &BytesStart<'_>, pos: usize) -> Result<Element> {
        let xml = self.xml;
        let name = e.name().as_ref().to_string();
        let prefix = qname_prefix(&name)
            .map_err(|()| error_at(xml, pos + 1, format!("invalid element name '{name}'")))?;
        let raw = e.attributes_raw();
        // The raw attributes borrow from the input: their offset locates errors.
        let raw_pos = (raw.as_ptr() as usize)
            .checked_sub(xml.as_ptr() as usize)
            .filter(|&o| o <= xml.len())
            .unwrap_or(pos);
        let attrs = parse_attrs(raw).map_err(|(o, m)| error_at(xml, raw_pos + o, m))?;
        for (k, v) in &attrs {
            let declared = match k.split_once(':') {
                Some(("xmlns", p)) => Some(p),
                None if k == "xmlns" => None,
                _ => continue,
            };
            match declared {
                Some("xml" | "xmlns") => {
                    return Err(error_at(
                        xml,
                        pos,
                        format!("the prefix of '{k}' is reserved"),
                    ));
                }
                Some(p) if v.is_empty() => {
                    return Err(error_at(
                        xml,
                        pos,
                        format!("namespace prefix '{p}' is bound to an empty name"),
                    ));
                }
                Some(p) => self.ns.declare(p),
                None => {}
            }
        }
        let in_scope = |p: &str| p == "xml" || self.ns.in_scope(p);
        if let Some(p) = prefix
            && !in_scope(p)
        {
            return Err(error_at(
                xml,
                pos,
                format!("namespace prefix '{p}' of <{name}> is not declared"),
            ));
        }
        for (k, _) in &attrs {
            if let Ok(Some(p)) = qname_prefix(k)
                && p != "xmlns"
                && !in_scope(p)
            {
                return Err(error_at(
                    xml,
                    pos,
                    format!("namespace prefix '{p}' of attribute '{k}' is not declared"),
                ));
            }
        }
        let mut el = Element::new(&name);
        el.attrs = attrs;
        Ok(el)
    }
}

/// Find `el` among what `parent` allows, marking it seen.
fn schema_child(
    xml: &str,
    pos: usize,
    el: &Element,
    parent: &mut Open,
) -> Result<Option<&'static Schema>> {
    let Some(ps) = parent.schema.filter(|s| !s.any) else {
        return Ok(None);
    };
    let Some(i) = ps.children.iter().position(|c| c.name == el.name) else {
        return Err(error_at(
            xml,
            pos,
            format!("unknown element <{}> in <{}>", el.name, ps.name),
        ));
    };
    let s = ps.children[i];
    let bit = 1u64 << (i % 64);
    if !s.repeat && parent.seen & bit != 0 {
        return Err(error_at(
            xml,
            pos,
            format!(
                "element <{}> appears more than once in <{}>",
                el.name, ps.name
            ),
        ));
    }
    parent.seen |= bit;
    Ok(Some(s))
}

fn check_attrs(xml: &str, pos: usize, el: &Element, schema: Option<&Schema>) -> Result<()> {
    if let Some(s) = schema
        && let Some((k, _)) = el
            .attrs
            .iter()
            .find(|(k, _)| !s.attrs.contains(&k.as_str()))
    {
        return Err(error_at(
            xml,
            pos,
            format!("unknown attribute '{k}' in <{}>", el.name),
        ));
    }
    Ok(())
}

/// Parse a whole document and return its root element.
pub fn parse_with(xml: &str, limits: &Limits, schema: Option<&'static Schema>) -> Result<Element> {
    if xml.len() > limits.max_bytes {
        return Err(Error::xml(format!(
            "document of {} bytes is larger than the limit of {} bytes",
            xml.len(),
            limits.max_bytes
        )));
    }
    // Positions are counted without a byte order mark.
    let xml = xml.strip_prefix('\u{feff}').unwrap_or(xml);
    let mut parser = Parser::new(xml, limits, schema);
    let mut first = true;
    loop {
        let pos = parser.reader.buffer_position() as usize;
        let ev = parser.reader.read_event().map_err(|e| {
            error_at(
                xml,
                parser.reader.error_position() as usize,
                format!("malformed document: {e}"),
            )
        })?;
        let was_first = std::mem::replace(&mut first, false);
        if !parser.event(ev, pos, was_first)? {
            return parser.finish();
        }
    }
}

/// One document being read: the reader, the elements open, the root once
/// it is closed. Each kind of event has a method of its own.
struct Parser<'a> {
    xml: &'a str,
    reader: Reader<&'a [u8]>,
    limits: &'a Limits,
    schema: Option<&'static Schema>,
    stack: Vec<Open>,
    ns: Namespaces,
    root: Option<Element>,
    /// Elements started so far.
    elements: usize,
}

impl<'a> Parser<'a> {
    fn new(xml: &'a str, limits: &'a Limits, schema: Option<&'static Schema>) -> Self {
        let mut reader = Reader::from_str(xml);
        let cfg = reader.config_mut();
        cfg.check_end_names = true;
        cfg.check_comments = true;
        cfg.allow_dangling_amp = false;
        cfg.allow_unmatched_ends = false;
        cfg.expand_empty_elements = false;
        cfg.trim_text(false);
        Parser {
            xml,
            reader,
            limits,
            schema,
            stack: Vec::new(),
            ns: Namespaces::default(),
            root: None,
            elements: 0,
        }
    }

    /// Handle the event read at byte `pos` (`first`: the document's first
    /// event). Ok(false) at the end of the input.
    fn event(&mut self, ev: Event<'a>, pos: usize, first: bool) -> Result<bool> {
        let xml = self.xml;
        match ev {
            Event::Start(ref e) => self.start(e, pos, false)?,
            Event::Empty(ref e) => self.start(e, pos, true)?,
            Event::End(_) => self.end(pos)?,
            Event::Text(ref t) => self.text(t, pos)?,
            Event::CData(c) => self.cdata(c, pos)?,
            Event::GeneralRef(r) => self.reference(&r, pos)?,
            Event::Decl(_) => self.decl(pos, first)?,
            Event::PI(p) => check_pi(xml, &p, pos)?,
            Event::Comment(c) => check_comment(xml, &c, pos)?,
            Event::DocType(_) => {
                return Err(error_at(
                    xml,
                    pos,
                    "DOCTYPE declarations (and so entity declarations) are not allowed",
                ));
            }
            Event::Eof => return Ok(false),
        }
        Ok(true)
    }

    /// A start tag (`empty`: a whole empty element): counted, bounded,
    /// checked, then left open or added to its parent.
    fn start(&mut self, e: &BytesStart<'_>, pos: usize, empty: bool) -> Result<()> {
        let xml = self.xml;
        if self.root.is_some() {
            return Err(error_at(xml, pos, "extra content after the root element"));
        }
        self.elements += 1;
        if self.elements > self.limits.max_elements {
            let max = self.limits.max_elements;
            let msg = format!("more than {max} elements in the document");
            return Err(error_at(xml, pos, msg));
        }
        if self.stack.len() >= self.limits.max_depth {
            let max = self.limits.max_depth;
            let msg = format!("elements nested deeper than {max} levels");
            return Err(error_at(xml, pos, msg));
        }
        let ns_len = self.ns.len();
        let el = StartCheck {
            xml,
            ns: &mut self.ns,
        }
        .element(e, pos)?;
        let schema = self.schema_of(&el, pos)?;
        check_attrs(xml, pos, &el, schema)?;
        if empty {
            self.ns.restore(ns_len);
            self.attach(el);
        } else {
            self.stack.push(Open {
                el,
                pos,
                schema,
                seen: 0,
                ns_len,
            });
        }
        Ok(())
    }

    /// The schema of a new element `el`: the document's for the root (whose
    /// name it must have), else what its parent allows.
    fn schema_of(&mut self, el: &Element, pos: usize) -> Result<Option<&'static Schema>> {
        match self.stack.last_mut() {
            Some(parent) => schema_child(self.xml, pos, el, parent),
            None => match self.schema {
                Some(s) if s.name != el.name => Err(error_at(
                    self.xml,
                    pos,
                    format!("expected root element <{}>, found <{}>", s.name, el.name),
                )),
                s => Ok(s),
            },
        }
    }

    /// A complete element: a child of the open element, or the root.
    fn attach(&mut self, el: Element) {
        match self.stack.last_mut() {
            Some(parent) => parent.el.children.push(el),
            None => self.root = Some(el),
        }
    }

    fn end(&mut self, pos: usize) -> Result<()> {
        // quick-xml has checked that the name matches the open element.
        let open = self
            .stack
            .pop()
            .ok_or_else(|| error_at(self.xml, pos, "closing tag without an open element"))?;
        self.ns.restore(open.ns_len);
        self.attach(open.el);
        Ok(())
    }

    /// Character data (references come as their own events).
    fn text(&mut self, t: &BytesText<'_>, pos: usize) -> Result<()> {
        let xml = self.xml;
        let raw: &str = t;
        if let Some((o, c)) = bad_char(raw) {
            return Err(error_at(xml, pos + o, not_allowed(c)));
        }
        if let Some(o) = raw.find("]]>") {
            return Err(error_at(xml, pos + o, "']]>' is not allowed in text"));
        }
        match self.stack.last_mut() {
            Some(open) => push_text(xml, pos, open, &t.xml10_content()),
            None if is_blank(raw) => Ok(()),
            None => Err(error_at(xml, pos, "text outside the root element")),
        }
    }

    fn cdata(&mut self, c: BytesCData<'_>, pos: usize) -> Result<()> {
        let xml = self.xml;
        let text = c.into_inner();
        if let Some((o, ch)) = bad_char(&text) {
            // After "<![CDATA[".
            return Err(error_at(xml, pos + 9 + o, not_allowed(ch)));
        }
        // Line ends normalized, as the reader does for other text.
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        match self.stack.last_mut() {
            Some(open) => push_text(xml, pos, open, &text),
            None => Err(error_at(xml, pos, "text outside the root element")),
        }
    }

    /// An entity or character reference in text.
    fn reference(&mut self, r: &BytesRef<'_>, pos: usize) -> Result<()> {
        let xml = self.xml;
        let body: &str = r;
        let ch = match body.strip_prefix('#') {
            Some(num) => char_ref(num)
                .ok_or_else(|| error_at(xml, pos, format!("bad character reference '&{body};'")))?,
            None => predefined_entity(body).ok_or_else(|| {
                error_at(
                    xml,
                    pos,
                    format!(
                        "unknown entity '&{body};' (only the five predefined entities are allowed)"
                    ),
                )
            })?,
        };
        match self.stack.last_mut() {
            Some(open) => push_text(xml, pos, open, ch.encode_utf8(&mut [0; 4])),
            None => Err(error_at(xml, pos, "text outside the root element")),
        }
    }

    /// The XML declaration, only as the very start of the document.
    fn decl(&mut self, pos: usize, first: bool) -> Result<()> {
        let xml = self.xml;
        if !first || pos != 0 {
            return Err(error_at(xml, pos, "the XML declaration must come first"));
        }
        let end = self.reader.buffer_position() as usize;
        // "<?xml" ... "?>"
        let body = xml.get(pos + 5..end.saturating_sub(2)).unwrap_or("");
        check_decl(body).map_err(|(o, m)| error_at(xml, pos + 5 + o, m))
    }

    /// The end of the input: the root, if it is complete.
    fn finish(self) -> Result<Element> {
        let xml = self.xml;
        if let Some(open) = self.stack.last() {
            return Err(error_at(
                xml,
                open.pos,
                format!(
                    "element <{}> is not closed at the end of the document",
                    open.el.name
                ),
            ));
        }
        self.root
            .ok_or_else(|| error_at(xml, xml.len(), "the document has no root element"))
    }
}

/// "character U+XXXX is not allowed in XML".
fn not_allowed(c: char) -> String {
    format!("character U+{:04X} is not allowed in XML", c as u32)
}

/// A processing instruction: a target that is a name other than "xml",
/// content of XML characters. Its content is ignored.
fn check_pi(xml: &str, p: &BytesPI<'_>, pos: usize) -> Result<()> {
    let target = p.target();
    if !is_ncname(target) || target.eq_ignore_ascii_case("xml") {
        return Err(error_at(
            xml,
            pos,
            format!("invalid processing instruction target '{target}'"),
        ));
    }
    match bad_char(p.content()) {
        Some((o, c)) => Err(error_at(xml, pos + o, not_allowed(c))),
        None => Ok(()),
    }
}

/// A comment: XML characters only (quick-xml checks for "--"). Ignored.
fn check_comment(xml: &str, c: &BytesText<'_>, pos: usize) -> Result<()> {
    match bad_char(c) {
        // After "<!--".
        Some((o, ch)) => Err(error_at(xml, pos + 4 + o, not_allowed(ch))),
        None => Ok(()),
    }
}

fn push_text(xml: &str, pos: usize, open: &mut Open, text: &str) -> Result<()> {
    if let Some(s) = open.schema
        && !s.text
        && !is_blank(text)
    {
        return Err(error_at(
            xml,
            pos,
            format!("text is not allowed in <{}>", s.name),
        ));
    }
    open.el.text.push_str(text);
    Ok(())
}

#[cfg(test)]
mod tests;
