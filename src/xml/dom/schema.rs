//! What a document is read against: the bounds on its size, depth and
//! element count ([`Limits`]), and for the library's own documents the
//! elements and attributes their type allows ([`Schema`]).

/// Bounds on a document, checked while it is read.
/// cbindgen:ignore
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes a document may have.
    pub max_bytes: usize,
    /// The deepest elements may nest.
    pub max_depth: usize,
    /// The most elements a document may have.
    pub max_elements: usize,
}

/// cbindgen:ignore
impl Limits {
    /// The library's own documents (`<domainbackup>`, `<target>`): small by
    /// nature (at most 1024 disks of a few elements each).
    pub const DOCUMENT: Limits = Limits {
        max_bytes: 1 << 20,
        max_depth: 64,
        max_elements: 16 * 1024,
    };
    /// Documents libvirt writes (domain, pool, checkpoint XML) and catalog
    /// records, which embed a domain definition. libxml2's own default depth
    /// limit is 256; libvirt's RPC strings are far below the size limit.
    pub const LIBVIRT: Limits = Limits {
        max_bytes: 32 << 20,
        max_depth: 256,
        max_elements: 1 << 20,
    };
}

/// The elements and attributes a document type allows: what libvirt's RNG
/// schemas do for its own documents. Elements are allowed once unless
/// `repeat`; non-blank text only where `text`; anything at all inside an
/// element that is `any` (a document of another vocabulary it carries,
/// bounded by the limits alone).
#[derive(Debug)]
pub struct Schema {
    /// The element's name.
    pub name: &'static str,
    /// The attributes it allows.
    pub attrs: &'static [&'static str],
    /// Whether it may hold non-blank text.
    pub text: bool,
    /// Whether it may appear more than once.
    pub repeat: bool,
    /// The child elements it allows.
    pub children: &'static [&'static Schema],
    /// Whether it may hold any elements, attributes and text below it.
    pub any: bool,
}

impl Schema {
    /// An element with attributes and children, no text.
    pub const fn element(
        name: &'static str,
        attrs: &'static [&'static str],
        children: &'static [&'static Schema],
    ) -> Schema {
        Schema {
            name,
            attrs,
            text: false,
            repeat: false,
            children,
            any: false,
        }
    }

    /// An element without attributes that may hold anything: a document
    /// of another vocabulary (a libvirt `<domain>`).
    pub const fn any(name: &'static str) -> Schema {
        Schema {
            name,
            attrs: &[],
            text: true,
            repeat: false,
            children: &[],
            any: true,
        }
    }

    /// An element holding only text.
    pub const fn text(name: &'static str) -> Schema {
        Schema {
            name,
            attrs: &[],
            text: true,
            repeat: false,
            children: &[],
            any: false,
        }
    }

    /// The same element, allowed any number of times.
    pub const fn repeated(self) -> Schema {
        Schema {
            repeat: true,
            ..self
        }
    }
}
