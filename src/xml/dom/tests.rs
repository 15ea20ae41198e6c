//! Tests of the element tree: documents written and read back exactly,
//! malformed documents and characters XML cannot carry refused.

use super::write::{escape_attr, escape_text};
use super::*;

#[test]
fn round_trip_with_escapes() {
    let el = Element::new("a")
        .with_attr("x", "1 & 'two' <3>")
        .with_child(Element::new("b").with_text("x < y & \"z\""));
    let back = parse(&el.to_xml().unwrap()).unwrap();
    assert_eq!(back.attr("x"), Some("1 & 'two' <3>"));
    assert_eq!(back.child_text("b"), Some("x < y & \"z\""));
}

#[test]
fn attribute_white_space_round_trips() {
    let path = "/a b/\"q\" \\ t\tn\nr\r\nf\u{fc}r.qcow2";
    let el = Element::new("source").with_attr("file", path);
    assert_eq!(
        parse(&el.to_xml().unwrap()).unwrap().attr("file"),
        Some(path)
    );
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

/// Values with every character a reader would otherwise change or
/// misread: markup, quotes, white space, non-ASCII.
const ODD: &[&str] = &[
    "/b/\u{fc}ber.qcow2",
    "/b/q\"uote",
    "/b/a'pos",
    "/b/back\\slash",
    "/b/amp&amp;",
    "/b/<lt>&gt;",
    "/b/a b",
    "/b/tab\there",
    "/b/new\nline",
    "/b/cr\rhere",
    "/b/crlf\r\nhere",
    "/b/]]>",
    "  /b/  two  ",
    "\n/b/\t\r\n",
    "/b/all \u{fc}\"'\\&<>\t\n\r end",
    "\u{10FFFF}\u{FFFD}\u{E000}\u{D7FF}",
];

#[test]
fn attribute_values_and_text_read_back_exactly() {
    for &v in ODD {
        let el = Element::new("a")
            .with_attr("x", v)
            .with_attr("y", format!("{v}{v}"))
            .with_child(Element::new("t").with_text(v).with_attr("z", v));
        let xml = el.to_xml().unwrap();
        let back = parse(&xml).unwrap();
        assert_eq!(back.attr("x"), Some(v), "{xml}");
        assert_eq!(back.attr("y"), Some(format!("{v}{v}").as_str()), "{xml}");
        let t = back.child("t").unwrap();
        assert_eq!(t.text, v, "{xml}");
        assert_eq!(t.attr("z"), Some(v), "{xml}");
        // Stable: written again, the same document.
        assert_eq!(back.to_xml().unwrap(), xml);
    }
}

#[test]
fn white_space_is_written_as_character_references() {
    assert_eq!(
        escape_attr("a\tb\nc\rd \u{fc}&<>\"'\\").unwrap(),
        "a&#9;b&#10;c&#13;d \u{fc}&amp;&lt;&gt;&quot;&apos;\\"
    );
    // In text, tab and line feed are kept by readers; carriage return is not.
    assert_eq!(
        escape_text("a\tb\nc\r\nd]]>").unwrap(),
        "a\tb\nc&#13;\nd]]&gt;"
    );
    let xml = Element::new("a").with_attr("x", "1\n2").to_xml().unwrap();
    assert_eq!(xml, "<a x='1&#10;2'/>\n");
}

#[test]
fn character_references_read_back_exactly() {
    let el =
        parse("<a x='&#9;&#10;&#13;&#xD;&#xA;&#x9;&#32;&#xFC;'>&#13;&#10;&#9;&#xD;</a>").unwrap();
    assert_eq!(el.attr("x"), Some("\t\n\r\r\n\t \u{fc}"));
    assert_eq!(el.text, "\r\n\t\r");
    // Literal white space in an attribute is normalized to spaces, as
    // XML 1.0 requires (hence the writer's references).
    let el = parse("<a x='1\t2\n3\r4\r\n5'/>").unwrap();
    assert_eq!(el.attr("x"), Some("1 2 3 4 5"));
}

/// NUL and the other C0 controls but tab, line feed and carriage
/// return, U+FFFE and U+FFFF: no XML 1.0 document holds them, literally
/// or as a reference.
const NOT_XML: &[char] = &[
    '\0', '\u{1}', '\u{8}', '\u{B}', '\u{C}', '\u{E}', '\u{1F}', '\u{FFFE}', '\u{FFFF}',
];

#[test]
fn values_xml_cannot_carry_are_refused_not_written() {
    for &c in NOT_XML {
        let v = format!("/b/x{c}y");
        let shown = v.escape_debug().to_string();
        let err = Element::new("a")
            .with_child(Element::new("target").with_attr("file", v.clone()))
            .to_xml()
            .unwrap_err();
        assert!(err.is(crate::error::ErrorCode::InvalidArg), "{err:?}");
        assert!(
            err.message.contains("attribute 'file' of <target>")
                && err.message.contains(&shown)
                && err.message.contains(&format!("U+{:04X}", c as u32)),
            "{}",
            err.message
        );
        let err = Element::new("description")
            .with_text(v.clone())
            .to_xml()
            .unwrap_err();
        assert!(err.is(crate::error::ErrorCode::InvalidArg), "{err:?}");
        assert!(
            err.message.contains("the text of <description>") && err.message.contains(&shown),
            "{}",
            err.message
        );
        assert_eq!(escape_attr(&v), Err(c));
        assert_eq!(escape_text(&v), Err(c));
    }
}

#[test]
fn references_to_characters_xml_cannot_carry_are_refused() {
    for &c in NOT_XML {
        let n = c as u32;
        for doc in [
            format!("<a x='&#{n};'/>"),
            format!("<a x='&#x{n:X};'/>"),
            format!("<a>&#{n};</a>"),
            format!("<a>&#x{n:x};</a>"),
        ] {
            let err = parse(&doc).unwrap_err();
            assert!(err.is(crate::error::ErrorCode::XmlError), "{doc}: {err:?}");
            assert!(
                err.message.contains("bad character reference"),
                "{doc}: {}",
                err.message
            );
        }
        let err = parse(&format!("<a x='{c}'/>")).unwrap_err();
        assert!(
            err.message.contains("is not allowed in XML"),
            "{}",
            err.message
        );
    }
}

#[test]
fn char_refs_and_cdata() {
    let el = parse("<a>&#65;<![CDATA[<b>]]></a>").unwrap();
    assert_eq!(el.text, "A<b>");
}
