//! `virt-backup default-target`: set, show or clear where a domain's
//! backups go when no target is given.

use clap::Args;
use serde_json::json;

use crate::api;
use crate::{Ctx, Res, err, utf8_path, xml_escape};

#[derive(Args)]
pub(crate) struct DefaultTargetArgs {
    domain: String,
    /// A folder, or pool:POOL
    #[arg(
        value_name = "DIR|pool:POOL",
        required_unless_present_any = ["show", "clear"],
        conflicts_with_all = ["show", "clear"]
    )]
    target: Option<String>,
    /// The setting of this process only, while the domain runs (as a
    /// program using the library keeps one); default: the persistent one
    #[arg(long, conflicts_with = "config")]
    live: bool,
    /// The persistent setting (the default)
    #[arg(long)]
    config: bool,
    /// Print the current setting
    #[arg(long, conflicts_with = "clear")]
    show: bool,
    /// Remove the setting: backups go to the catalog again
    #[arg(long)]
    clear: bool,
}

/// The setting as given on the command line: a folder or pool:POOL; None
/// for none.
fn from_xml(x: &str) -> Res<Option<String>> {
    let doc = roxmltree::Document::parse(x).map_err(|e| err(e.to_string()))?;
    let root = doc.root_element();
    let text = |n: &str| {
        root.children()
            .find(|c| c.has_tag_name(n))
            .and_then(|c| c.text())
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    Ok(match root.attribute("type") {
        Some("dir") => Some(text("path")),
        Some("pool") => Some(format!("pool:{}", text("pool"))),
        _ => None,
    })
}

pub(crate) fn cmd_default_target(ctx: &mut Ctx, a: &DefaultTargetArgs) -> Res<()> {
    let dom = ctx.domain(&a.domain)?;
    let (flags, scope) = if a.live {
        (api::AFFECT_LIVE, "live (this process)")
    } else {
        (api::AFFECT_CONFIG, "persistent")
    };
    if a.show {
        let shown = from_xml(&api::get_default_target(&dom, flags)?)?;
        match &shown {
            Some(t) => ctx.say(t),
            None => ctx.say("none (backups without a target go to the catalog)"),
        }
        ctx.print_json(json!({"domain": a.domain, "target": shown, "live": a.live}));
        return Ok(());
    }
    let x = match a.target.as_deref() {
        None => "<target type='none'/>".to_string(),
        Some(t) => match t.strip_prefix("pool:") {
            Some(p) => format!(
                "<target type='pool'><pool>{}</pool></target>",
                xml_escape(p)
            ),
            None => {
                let dir = std::path::absolute(t).map_err(|e| err(format!("{t}: {e}")))?;
                format!(
                    "<target type='dir'><path>{}</path></target>",
                    xml_escape(utf8_path("the folder", &dir)?)
                )
            }
        },
    };
    api::set_default_target(&dom, &x, flags)?;
    let done = if a.clear { "cleared" } else { "set" };
    ctx.say(&format!(
        "Default backup target of {} {done} ({scope})",
        a.domain
    ));
    ctx.print_json(json!({"domain": a.domain, "target": a.target, "live": a.live}));
    Ok(())
}
