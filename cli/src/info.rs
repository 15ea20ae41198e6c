//! What the command reads from a backup's XML (GetXMLDesc), and the tree
//! drawing of `list --tree` (the layout of `virsh snapshot-list --tree`).

use serde_json::json;

#[derive(Debug, Clone, Default)]
pub(crate) struct DiskInfo {
    pub name: String,
    pub mode: String,
    pub target: String,
    pub format: String,
    pub exportname: String,
    pub exportbitmap: String,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct BackupInfo {
    pub uuid: String,
    pub creation_time: i64,
    pub description: String,
    pub state: String,
    pub parent: Option<String>,
    pub domain: String,
    pub domain_uuid: String,
    pub disks: Vec<DiskInfo>,
}

impl BackupInfo {
    pub(crate) fn parse(xml: &str) -> Result<BackupInfo, String> {
        let doc = roxmltree::Document::parse(xml).map_err(|e| format!("bad backup XML: {e}"))?;
        let root = doc.root_element();
        let text = |name: &str| {
            root.children()
                .find(|n| n.has_tag_name(name))
                .and_then(|n| n.text())
                .unwrap_or_default()
                .to_string()
        };
        let parent = root
            .children()
            .find(|n| n.has_tag_name("parent"))
            .and_then(|p| p.children().find(|n| n.has_tag_name("uuid")))
            .and_then(|u| u.text())
            .map(str::to_string);
        let domain_el = root.children().find(|n| n.has_tag_name("domain"));
        let domain_attr = |a: &str| {
            domain_el
                .and_then(|d| d.attribute(a))
                .unwrap_or_default()
                .to_string()
        };
        let (domain, domain_uuid) = (domain_attr("name"), domain_attr("uuid"));
        let mut disks = Vec::new();
        if let Some(ds) = root.children().find(|n| n.has_tag_name("disks")) {
            for d in ds.children().filter(|n| n.has_tag_name("disk")) {
                let child_attr = |tag: &str, attr: &str| {
                    d.children()
                        .find(|n| n.has_tag_name(tag))
                        .and_then(|n| n.attribute(attr))
                        .unwrap_or_default()
                        .to_string()
                };
                disks.push(DiskInfo {
                    name: d.attribute("name").unwrap_or_default().to_string(),
                    mode: d.attribute("backupmode").unwrap_or_default().to_string(),
                    target: child_attr("target", "file"),
                    format: child_attr("driver", "type"),
                    exportname: d.attribute("exportname").unwrap_or_default().to_string(),
                    exportbitmap: d.attribute("exportbitmap").unwrap_or_default().to_string(),
                });
            }
        }
        Ok(BackupInfo {
            uuid: text("uuid"),
            creation_time: text("creationTime").parse().unwrap_or(0),
            description: text("description"),
            state: text("state"),
            parent,
            domain,
            domain_uuid,
            disks,
        })
    }

    pub(crate) fn kind(&self) -> &'static str {
        if self.disks.iter().any(|d| d.mode == "incremental") {
            "incremental"
        } else {
            "full"
        }
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        json!({
            "uuid": self.uuid,
            "creation_time": self.creation_time,
            "description": self.description,
            "state": self.state,
            "parent": self.parent,
            "domain": self.domain,
            "domain_uuid": self.domain_uuid,
            "kind": self.kind(),
            "disks": self.disks.iter().map(|d| json!({
                "name": d.name, "mode": d.mode, "target": d.target, "format": d.format,
            })).collect::<Vec<_>>(),
        })
    }
}

/// `ctime`-like local time, as virsh prints creation times.
pub(crate) fn local_time(t: i64) -> String {
    let time = t as libc::time_t;
    // SAFETY: libc::tm is a plain C struct (ints and a pointer) for which
    // all zeroes is valid.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals; localtime_r is thread-safe.
    unsafe { libc::localtime_r(&time, &mut tm) };
    let mut buf = [0u8; 64];
    // SAFETY: strftime writes at most `buf.len()` bytes into `buf`, from a
    // static C format and a filled `tm`, and returns how many.
    let n = unsafe {
        libc::strftime(
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
            c"%Y-%m-%d %H:%M:%S %z".as_ptr(),
            &tm,
        )
    };
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The tree of `items` (name, parent) as virsh draws it (vshTreePrint):
/// roots at the left, each child under "  |" then "  +- name".
pub(crate) fn tree(items: &[(String, Option<String>)]) -> String {
    let mut out = String::new();
    let is_root = |p: &Option<String>| {
        p.as_ref()
            .is_none_or(|p| !items.iter().any(|(n, _)| n == p))
    };
    for (i, (_, p)) in items.iter().enumerate() {
        if is_root(p) {
            let mut indent = String::new();
            node(items, i, 0, true, &mut indent, &mut out);
        }
    }
    out
}

fn node(
    items: &[(String, Option<String>)],
    id: usize,
    last: usize,
    root: bool,
    indent: &mut String,
    out: &mut String,
) {
    let name = &items[id].0;
    out.push_str(&format!(
        "{indent}{}{name}\n",
        if root { "" } else { "+- " }
    ));
    if !root {
        indent.push(if id == last { ' ' } else { '|' });
        indent.push(' ');
    }
    let children: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].1.as_deref() == Some(name.as_str()))
        .collect();
    let next_last = children.last().copied();
    if next_last.is_some() {
        out.push_str(&format!("{indent}  |\n"));
    }
    indent.push_str("  ");
    for &c in &children {
        node(items, c, next_last.unwrap(), false, indent, out);
    }
    indent.truncate(indent.len() - 2);
    if next_last.is_none() && id == last {
        out.push_str(&format!("{}\n", indent.trim_end()));
    }
    if !root {
        indent.truncate(indent.len() - 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_like_virsh() {
        let items = vec![
            ("full".to_string(), None),
            ("a".to_string(), Some("full".to_string())),
            ("a1".to_string(), Some("a".to_string())),
            ("b".to_string(), Some("full".to_string())),
        ];
        assert_eq!(
            tree(&items),
            "full\n  |\n  +- a\n  |   |\n  |   +- a1\n  |\n  +- b\n\n"
        );
    }
}
